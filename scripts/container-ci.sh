#!/usr/bin/env bash
# Everything the container deliverables promise, checked on this machine with a real Docker engine:
#   1. lint the Dockerfile (hadolint), validate both compose files (the real Compose binary) and the
#      Kubernetes manifests (kubernetes-validate, strict), lint the manifests (checkov, waivers
#      with reasons in deploy/k8s/.checkov.yaml);
#   2. build the image (torch's CPU wheel from $PIP_FIND_LINKS when the machine has one), and the
#      previous release's image from its commit (the last line of deploy/releases.txt);
#   3. run it hardened (read-only root, /tmp a tmpfs, no capabilities, no new privileges, 2 CPUs,
#      2 GB) on host networking against a fresh database on the host's PostgreSQL: it waits for the
#      database, migrates, turns healthy, sizes itself to the CPU limit, classifies a real photo,
#      writes its row; behind nginx (docker/nginx.conf, Debian's nginx) the request id passes,
#      /metrics and /docs are not published, connections are kept alive; on SIGTERM under load it
#      finishes every accepted request (scripts/load_check.py drain);
#   4. bring the compose stack up with docker-compose.ci.yml and check /health through it;
#   5. start three replicas against one fresh database at the same moment: exactly one migrates,
#      all become ready, and a load spread over them leaves every 200 in the database;
#   6. roll out from the previous release to this one and back under load, as deploy/k8s does it
#      (the migration as its own run of the new image, then new replicas, then old ones stopped):
#      no failed request, every listed replica ready throughout, every 200 has its row.
# Needs root (to install and start the engine) and PostgreSQL on 127.0.0.1:5432 (make postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
IMAGE=${VISINSPECT_IMAGE:-visinspect:ci}
PG_ADMIN_URL=${TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
COMPOSE=$("$PY" -c "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))")
step() { printf '\n=== %s\n' "$*"; }
containers=()
databases=()
work=""
load_pid=""
cleanup() {
  [ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null || true
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  if [ -n "$work" ]; then
    [ ! -f "$work/nginx/nginx.pid" ] || nginx -c "$work/nginx/nginx.conf" -s stop 2>/dev/null || true
    git worktree remove --force "$work/previous" 2>/dev/null || true
    rm -rf "$work"
  fi
  "$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci down -t 5 >/dev/null 2>&1 || true
  for d in "${databases[@]}"; do drop_database "$d"; done
}
trap cleanup EXIT

sql() { "$PY" - "$PG_ADMIN_URL" "$@" <<'PYEOF'
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    for statement in sys.argv[2:]:
        conn.execute(text(statement))
PYEOF
}
new_database() {  # prints the URL of a fresh, empty database on the host's PostgreSQL
  local name="visinspect_ci_$(date +%s%N | tail -c 10)"
  sql "CREATE DATABASE $name" >&2
  databases+=("$name")
  echo "postgresql+psycopg://postgres@127.0.0.1:5432/$name"
}
drop_database() { sql "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true; }
free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_healthy() {  # container name, deadline seconds: Docker's own HEALTHCHECK must say healthy
  local deadline=$((SECONDS + $2))
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]; do
    if [ $SECONDS -ge $deadline ] || [ "$(docker inspect -f '{{.State.Running}}' "$1")" != true ]; then
      docker logs "$1" | tail -30; echo "container $1 did not become healthy" >&2; return 1
    fi
    sleep 1
  done
}
wait_http() {  # url, deadline seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS "$1" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "no answer from $1" >&2; return 1; }
    sleep 1
  done
}

named() {  # a container name of ours: a leftover of an interrupted run is removed; cleanup removes it
  docker rm -f "$1" >/dev/null 2>&1 || true
  containers+=("$1")
}
logged() {  # container, event: the container logged that event (grep reads it all: no SIGPIPE)
  docker logs "$1" 2>&1 | grep "\"$2\"" >/dev/null || { echo "$1 did not log $2" >&2; return 1; }
}

step "1. lint and validate"
export POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-ci-only}  # compose requires one; CI's db is the host's
"$VENV/bin/hadolint" Dockerfile
"$COMPOSE" -f docker-compose.yml config -q
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml config -q
work=$(mktemp -d)
"$PY" - deploy/k8s/config.env "$work/configmap.yaml" <<'PYEOF'
import sys, yaml  # the ConfigMap configMapGenerator makes of config.env, to validate it too
lines = open(sys.argv[1]).read().splitlines()
data = dict(l.split("=", 1) for l in lines if l and not l.startswith("#"))
doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visinspect"}, "data": data}
open(sys.argv[2], "w").write(yaml.safe_dump(doc))
PYEOF
manifests=()  # every manifest of both kustomizations, and the generated ConfigMap
for file in deploy/k8s/*.yaml deploy/k8s/migrate/*.yaml; do
  case $(basename "$file") in kustomization.yaml) ;; *) manifests+=("$file") ;; esac
done
manifests+=("$work/configmap.yaml")
"$VENV/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "${manifests[@]}"
if [ ! -x .venv-manifests/bin/checkov ]; then  # its own venv: checkov pins what the dev venv must not
  python3 -m venv .venv-manifests
  .venv-manifests/bin/pip install --quiet "$("$PY" -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['manifests'])")"
fi
BC_SKIP_MAPPING=TRUE .venv-manifests/bin/checkov -d deploy/k8s --config-file deploy/k8s/.checkov.yaml
echo "hadolint, compose config -q (2 files), kubernetes-validate --strict (${#manifests[@]} manifests), checkov: ok"

step "2. build $IMAGE"
# shellcheck source=scripts/docker-engine.sh
source scripts/docker-engine.sh
bash scripts/base-image.sh
torch_index=https://download.pytorch.org/whl/cpu
local_torch=$(ls "${PIP_FIND_LINKS:-/nonexistent}"/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
if [ -n "$local_torch" ]; then
  cp -u "$local_torch" docker/wheels/
  torch_index=""  # the local CPU wheel; the PyTorch index is out of reach here
fi
build() {  # context, tag: on the locally made stand-in for the digest-pinned base
  DOCKER_BUILDKIT=1 /usr/bin/docker build --quiet --network host --build-arg PYTHON_IMAGE=python:3.11-slim \
    --build-arg TORCH_INDEX_URL="$torch_index" -t "$2" "$1" >/dev/null
}
started=$SECONDS
build . "$IMAGE"
size_mb=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1/1e6}')
echo "built in $((SECONDS - started)) s; size $size_mb MB (target: at most 450 MB)"
[ "$size_mb" -le 450 ] || { echo "the image is $size_mb MB, above 450 MB" >&2; exit 1; }
docker run --rm --entrypoint sh "$IMAGE" -c \
  'test "$(id -u)" = 10001 && python3 -c "from importlib.util import find_spec as f; assert f(\"torch\") is None and f(\"onnx\") is None"'
docker run --rm --entrypoint visinspect "$IMAGE" model show | "$PY" -c "import json, sys; m = json.load(sys.stdin); print('artifact:', m['model_name'], sorted(m['graphs']), 'weights', m['weights_sha256'][:16])"
echo "runs as uid 10001; no torch, no onnx; serves the artifact in MODEL_DIR"
docker run --rm --entrypoint visinspect "$IMAGE" classify --help >/dev/null
docker run --rm --entrypoint python3 "$IMAGE" -c "from visinspect.client import Client"
echo "the image runs \`visinspect classify --help\` and imports the client"
rss_kb=$(docker run --rm --network host -e DATABASE_URL="sqlite:////tmp/x.db" --read-only --tmpfs /tmp \
  --entrypoint python3 "$IMAGE" -c "import resource, subprocess; subprocess.run(['visinspect', 'db', 'upgrade'], capture_output=True, check=True); subprocess.run(['visinspect', 'db', 'current'], capture_output=True, check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
echo "visinspect db upgrade / current: at most $((rss_kb / 1024)) MiB resident (the init container's limit: 256 MiB)"
[ "$rss_kb" -lt $((192 * 1024)) ]
read -r previous_version previous_commit < <(grep -v '^#' deploy/releases.txt | tail -1)
PREVIOUS_IMAGE="visinspect:$previous_version"
git cat-file -e "$previous_commit^{commit}" 2>/dev/null || git fetch --quiet origin "$previous_commit" || true
git worktree add --force --detach "$work/previous" "$previous_commit" >/dev/null 2>&1 \
  || { echo "release $previous_version: commit $previous_commit is not in this clone (and could not be fetched)" >&2; exit 1; }
[ -z "$local_torch" ] || cp "$local_torch" "$work/previous/docker/wheels/"
started=$SECONDS
build "$work/previous" "$PREVIOUS_IMAGE"
git worktree remove --force "$work/previous"
echo "previous release $previous_version ($previous_commit) built as $PREVIOUS_IMAGE in $((SECONDS - started)) s"

step "3. one container, hardened: migrate, healthy, CPU limit, classify, row, nginx, SIGTERM under load"
# What the Kubernetes pods and compose run with: nothing writable but /tmp, no capabilities.
HARDENED=(--read-only --tmpfs /tmp:size=1g --cap-drop ALL --security-opt no-new-privileges --cpus 2 --memory 2g)
db_url=$(new_database)
port=$(free_port)
named visinspect-smoke
docker run -d --name visinspect-smoke --network host --stop-timeout 40 "${HARDENED[@]}" \
  -e DATABASE_URL="$db_url" -e HOST=127.0.0.1 -e PORT="$port" -e FORWARDED_ALLOW_IPS=127.0.0.1 \
  "$IMAGE" >/dev/null
wait_healthy visinspect-smoke 90
curl -fsS "http://127.0.0.1:$port/health" && echo
# Processes, lanes and decoders follow the container's CPU quota, not the machine's CPU count.
quota_cpus=$(docker run --rm --cpus 1 --entrypoint python3 "$IMAGE" -c "from visinspect.capacity import usable_cpus; print(usable_cpus())")
echo "usable CPUs under --cpus 1: $quota_cpus"
[ "$quota_cpus" = 1 ]
photo=$("$PY" -c "from scripts.load_check import PHOTO; print(PHOTO)")
answer=$(curl -fsS -H 'X-Request-ID: container-smoke-1' -F "file=@$photo" "http://127.0.0.1:$port/predict")
echo "$answer" | "$PY" -c "import json, sys; b = json.load(sys.stdin); assert b['predictions'][0]['class_name'] == 'espresso', b; print('predict:', b['predictions'][0])"
"$PY" - "$db_url" <<'PYEOF'
import sys
from sqlalchemy import create_engine, text
with create_engine(sys.argv[1]).connect() as conn:
    rows = conn.execute(text("SELECT class_name FROM predictions WHERE request_id = 'container-smoke-1'")).all()
    assert [r[0] for r in rows] == ["espresso"], rows
    print("row stored:", rows[0][0], "| schema revision:", conn.scalar(text("SELECT version_num FROM alembic_version")))
PYEOF
command -v nginx >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
proxy_port=$(free_port)
mkdir -p "$work/nginx"
sed -e "s|server api:8000;|server 127.0.0.1:$port;|" -e "s|listen 8000;|listen 127.0.0.1:$proxy_port;|" \
  -e "s|access_log /dev/stdout|access_log $work/nginx/access.log|" docker/nginx.conf >"$work/nginx/default.conf"
printf 'worker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\nhttp { include %s/default.conf; }\n' \
  "$work/nginx" "$work/nginx" "$work/nginx" >"$work/nginx/nginx.conf"
nginx -c "$work/nginx/nginx.conf"
"$PY" - "http://127.0.0.1:$proxy_port" "$port" "$db_url" "$work/nginx/access.log" "$photo" <<'PYEOF'
import json, subprocess, sys, time
import httpx
from sqlalchemy import create_engine, text
proxy, api_port, db_url, access_log, photo = sys.argv[1:]
files = lambda: {"file": ("coffee.png", open(photo, "rb").read(), "image/png")}
with httpx.Client(base_url=proxy, timeout=30) as client:
    given = client.post("/predict", files=files(), headers={"X-Request-ID": "through-nginx-1"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "through-nginx-1", given
    made = client.post("/predict", files=files())
    assert made.status_code == 200, made
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32, made_id  # nginx's $request_id, passed to the API
    hidden = {path: client.get(path).status_code for path in ("/metrics", "/docs", "/docs-assets/swagger-ui.css", "/openapi.json")}
    assert set(hidden.values()) == {404}, hidden
    assert client.get("/health").status_code == 200
    for _ in range(5):
        assert client.get("/health/live").status_code == 200
    # A client's own X-Forwarded-For is replaced by nginx, not appended to: the API (which
    # believes nginx) logs the peer nginx saw, never the address the client claims.
    forged = client.get("/health/live", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "forged-xff-1"})
    assert forged.status_code == 200, forged
time.sleep(0.2)
logged = [json.loads(line)["request_id"] for line in open(access_log)]
assert {"through-nginx-1", made_id} <= set(logged), logged
with create_engine(db_url).connect() as conn:
    stored = set(conn.execute(text("SELECT request_id FROM predictions")).scalars())
assert {"through-nginx-1", made_id} <= stored, stored
# Connections from nginx to the API stay open between requests (upstream keepalive).
idle = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{api_port} )"], capture_output=True, text=True).stdout.strip().splitlines()
assert idle, "no kept-alive connection from nginx to the API"
print(f"nginx: request id passed and logged ({made_id}), rows stored, /metrics /docs /openapi.json 404, {len(idle)} kept-alive upstream connection(s)")
PYEOF
docker logs visinspect-smoke 2>&1 | "$PY" -c "
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.startswith('{')]
(forged,) = [l for l in lines if l.get('request_id') == 'forged-xff-1' and l['event'] == 'http.request']
assert forged['client'] == '127.0.0.1', forged
print('nginx: a forged X-Forwarded-For is replaced; the API logged', forged['client'])
"
nginx -c "$work/nginx/nginx.conf" -s stop
"$PY" scripts/load_check.py drain --url "http://127.0.0.1:$port" --database-url "$db_url" \
  --stop "docker kill --signal TERM visinspect-smoke"
docker wait visinspect-smoke >/dev/null
logged visinspect-smoke shutdown.complete
echo "clean shutdown logged"
docker logs visinspect-smoke 2>&1 | grep -E '"db.wait"|"db.reachable"|"db.migrated"' | head -3

step "4. compose stack with docker-compose.ci.yml"
db_url=$(new_database)
port=$(free_port)
VISINSPECT_IMAGE="$IMAGE" DATABASE_URL="${db_url/127.0.0.1/db}" API_PORT="$port" \
  "$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci up -d --no-build --wait --wait-timeout 120
curl -fsS "http://127.0.0.1:$port/health" && echo
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci ps --format '{{.Service}} {{.State}} {{.Health}}'
# The upload is kept on the `images` volume, writable by the service's uid without any chown.
kept_id=$(curl -fsS -F "file=@$photo" "http://127.0.0.1:$port/predict" \
  | "$PY" -c "import json, sys; b = json.load(sys.stdin); assert b['image_kept'] is True, b; print(b['id'])")
thumbnail_type=$(curl -fsS -o /dev/null -w '%{content_type}' "http://127.0.0.1:$port/predictions/$kept_id/image?variant=thumbnail")
[ "$thumbnail_type" = image/jpeg ] || { echo "thumbnail served as $thumbnail_type" >&2; exit 1; }
echo "compose: prediction $kept_id kept on the images volume; its thumbnail served as $thumbnail_type"
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci down -v -t 40

step "5. three replicas, one fresh database, started at the same moment"
db_url=$(new_database)
urls=()
for i in 1 2 3; do
  port=$(free_port)
  urls+=("http://127.0.0.1:$port")
  named "visinspect-replica-$i"
  docker create --name "visinspect-replica-$i" --network host \
    -e DATABASE_URL="$db_url" -e HOST=127.0.0.1 -e PORT="$port" -e TORCH_THREADS=1 "$IMAGE" >/dev/null
done
docker start visinspect-replica-1 visinspect-replica-2 visinspect-replica-3 >/dev/null
for i in 1 2 3; do wait_healthy "visinspect-replica-$i" 120; done
migrated=$(for i in 1 2 3; do docker logs "visinspect-replica-$i" 2>&1; done | grep '"db.migrated"' | grep -c '"changed": true' || true)
echo "replicas healthy: 3; migrations that changed the schema: $migrated"
[ "$migrated" = 1 ]
"$PY" scripts/load_check.py spread --urls "$(IFS=,; echo "${urls[*]}")" --requests 60 \
  --concurrency 6 --database-url "$db_url"

step "6. rolling upgrade $previous_version -> this checkout -> $previous_version, under load, hardened"
db_url=$(new_database)
endpoints="$work/endpoints"; stop_file="$work/stop-load"
: >"$endpoints"
start_replica() {  # name, image, MIGRATE_ON_START: sets $replica_url once the replica is healthy
  local port; port=$(free_port)
  named "$1"  # not in a subshell: cleanup must know the container
  docker run -d --name "$1" --network host --stop-timeout 40 "${HARDENED[@]}" -e DATABASE_URL="$db_url" \
    -e HOST=127.0.0.1 -e PORT="$port" -e MIGRATE_ON_START="$3" -e SHUTDOWN_GRACE_S=2 "$2" >/dev/null
  wait_healthy "$1" 120
  replica_url="http://127.0.0.1:$port"
}
list() { echo "$1" >>"$endpoints"; echo "  in rotation: $1 ($2)"; }
retire() {  # the replica leaves the endpoints, then (as after a preStop pause) gets SIGTERM
  grep -vxF "$1" "$endpoints" >"$endpoints.new" || true; mv "$endpoints.new" "$endpoints"
  sleep 2
  docker stop -t 40 "$2" >/dev/null
  echo "  retired: $1 ($2)"
}
start_replica rollout-old-1 "$PREVIOUS_IMAGE" true  # compose-style: the old release migrated
old_1=$replica_url
list "$old_1" "$previous_version"
"$PY" scripts/load_check.py rollout --endpoints "$endpoints" --stop-file "$stop_file" \
  --database-url "$db_url" >"$work/rollout.json" &
load_pid=$!
sleep 3
echo "  migration: this checkout's \`visinspect db upgrade\` (the Job), while $previous_version serves"
docker run --rm --network host "${HARDENED[@]}" -e DATABASE_URL="$db_url" --entrypoint visinspect "$IMAGE" db upgrade 2>&1 \
  | grep '"db.migrated"'
sleep 3
start_replica rollout-new-1 "$IMAGE" false  # Kubernetes-style: serving never migrates
new_1=$replica_url
list "$new_1" "new"
sleep 2
retire "$old_1" rollout-old-1
sleep 3
echo "  rollback (kubectl rollout undo): $previous_version again, on the newer schema"
start_replica rollout-old-2 "$PREVIOUS_IMAGE" true
old_2=$replica_url
list "$old_2" "$previous_version"
sleep 2
retire "$new_1" rollout-new-1
sleep 3
touch "$stop_file"
if ! wait "$load_pid"; then
  load_pid=""
  cat "$work/rollout.json"; echo "requests failed or replicas turned unready during the rollout" >&2; exit 1
fi
load_pid=""
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print('  load:', {k: r[k] for k in ('requests', 'ok', 'failed', 'per_server')}, 'unready while listed:', len(r['unready_while_listed']), 'ok without one row:', len(r['ok_without_exactly_one_row']))" "$work/rollout.json"
"$PY" - "$db_url" "$old_1" "$new_1" "$old_2" "$work/rollout.json" <<'PYEOF'
import json, sys
from sqlalchemy import create_engine, text
db_url, old_1, new_1, old_2, report = sys.argv[1:]
served = json.load(open(report))["per_server"]
assert all(served.get(url, 0) > 0 for url in (old_1, new_1, old_2)), served
with create_engine(db_url).connect() as conn:
    by_release = dict(conn.execute(text("SELECT decode_ms IS NOT NULL, count(*) FROM predictions GROUP BY 1")).all())
# Rows of the previous release have no latency breakdown (it does not know the columns); this
# release's rows have one.
assert by_release.get(False, 0) > 0 and by_release.get(True, 0) > 0, by_release
print(f"  rows: {by_release[False]} by the previous release, {by_release[True]} by this one")
PYEOF
logged rollout-old-2 db.newer_schema  # it restarted with MIGRATE_ON_START=true and left the schema as it was
echo "  $previous_version restarted on the newer schema without touching it (db.newer_schema)"

step "container checks passed"
