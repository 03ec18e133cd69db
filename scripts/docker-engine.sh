#!/usr/bin/env bash
# Source this: make sure a Docker engine answers and export DOCKER_HOST for it.
# Uses the machine's engine when one answers; otherwise installs Debian's docker.io (when missing)
# and starts a private daemon with no bridge network (host networking only, as these machines
# require). Its data root persists, so base images and build layers are reused between runs.
set -euo pipefail

VISINSPECT_DOCKER_ROOT=${VISINSPECT_DOCKER_ROOT:-/var/lib/visinspect-docker}
if docker info >/dev/null 2>&1; then
  return 0 2>/dev/null || exit 0
fi
export DOCKER_HOST="unix://$VISINSPECT_DOCKER_ROOT/docker.sock"
if docker info >/dev/null 2>&1; then
  return 0 2>/dev/null || exit 0
fi
if ! command -v dockerd >/dev/null; then
  echo "docker-engine: installing docker.io (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
mkdir -p "$VISINSPECT_DOCKER_ROOT"
echo "docker-engine: starting a private dockerd in $VISINSPECT_DOCKER_ROOT"
nohup dockerd --data-root "$VISINSPECT_DOCKER_ROOT/data" --exec-root "$VISINSPECT_DOCKER_ROOT/exec" \
  --pidfile "$VISINSPECT_DOCKER_ROOT/docker.pid" --host "$DOCKER_HOST" \
  --bridge none --iptables=false --ip6tables=false --storage-driver overlay2 \
  >"$VISINSPECT_DOCKER_ROOT/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && break
  sleep 0.5
done
docker info >/dev/null 2>&1 || { tail -20 "$VISINSPECT_DOCKER_ROOT/dockerd.log" >&2; exit 1; }
