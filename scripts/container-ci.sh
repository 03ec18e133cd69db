#!/usr/bin/env bash
# Everything the container deliverables promise, checked on this machine with a real Docker engine:
#   1. lint the Dockerfile (hadolint), validate both compose files (the real Compose binary) and the
#      Kubernetes manifests (kubernetes-validate, strict);
#   2. build the image (torch's CPU wheel from $PIP_FIND_LINKS when the machine has one);
#   3. run it on host networking against a fresh database on the host's PostgreSQL: it waits for the
#      database, migrates, turns healthy, classifies a real photo, writes its row, and on SIGTERM
#      under load finishes every accepted request (scripts/load_check.py drain);
#   4. bring the compose stack up with docker-compose.ci.yml and check /health through it;
#   5. start three replicas against one fresh database at the same moment: exactly one migrates,
#      all become ready, and a load spread over them leaves every 200 in the database.
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
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
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

step "1. lint and validate"
"$VENV/bin/hadolint" Dockerfile
"$COMPOSE" -f docker-compose.yml config -q
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml config -q
"$VENV/bin/kubernetes-validate" --strict --quiet -k 1.31.0 \
  deploy/k8s/configmap.yaml deploy/k8s/migrate-job.yaml deploy/k8s/deployment.yaml \
  deploy/k8s/service.yaml deploy/k8s/hpa.yaml deploy/k8s/prometheus-adapter-rule.yaml
echo "hadolint, compose config -q (2 files), kubernetes-validate --strict (6 manifests): ok"

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
started=$SECONDS
DOCKER_BUILDKIT=1 /usr/bin/docker build --quiet --network host \
  --build-arg TORCH_INDEX_URL="$torch_index" -t "$IMAGE" . >/dev/null
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

step "3. one container: migrate, healthy, classify, row, SIGTERM under load"
db_url=$(new_database)
port=$(free_port)
docker run -d --name visinspect-smoke --network host --stop-timeout 40 \
  -e DATABASE_URL="$db_url" -e HOST=127.0.0.1 -e PORT="$port" "$IMAGE" >/dev/null
containers+=(visinspect-smoke)
wait_healthy visinspect-smoke 90
curl -fsS "http://127.0.0.1:$port/health" && echo
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
"$PY" scripts/load_check.py drain --url "http://127.0.0.1:$port" --database-url "$db_url" \
  --stop "docker kill --signal TERM visinspect-smoke"
docker wait visinspect-smoke >/dev/null
docker logs visinspect-smoke 2>&1 | grep -q '"shutdown.complete"' && echo "clean shutdown logged"
docker logs visinspect-smoke 2>&1 | grep -E '"db.wait"|"db.reachable"|"db.migrated"' | head -3

step "4. compose stack with docker-compose.ci.yml"
db_url=$(new_database)
port=$(free_port)
VISINSPECT_IMAGE="$IMAGE" DATABASE_URL="${db_url/127.0.0.1/db}" API_PORT="$port" \
  "$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci up -d --no-build --wait --wait-timeout 120
curl -fsS "http://127.0.0.1:$port/health" && echo
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci ps --format '{{.Service}} {{.State}} {{.Health}}'
"$COMPOSE" -f docker-compose.yml -f docker-compose.ci.yml -p visinspect-ci down -t 40

step "5. three replicas, one fresh database, started at the same moment"
db_url=$(new_database)
urls=()
for i in 1 2 3; do
  port=$(free_port)
  urls+=("http://127.0.0.1:$port")
  docker create --name "visinspect-replica-$i" --network host \
    -e DATABASE_URL="$db_url" -e HOST=127.0.0.1 -e PORT="$port" -e TORCH_THREADS=1 "$IMAGE" >/dev/null
  containers+=("visinspect-replica-$i")
done
docker start visinspect-replica-1 visinspect-replica-2 visinspect-replica-3 >/dev/null
for i in 1 2 3; do wait_healthy "visinspect-replica-$i" 120; done
migrated=$(for i in 1 2 3; do docker logs "visinspect-replica-$i" 2>&1; done | grep '"db.migrated"' | grep -c '"changed": true' || true)
echo "replicas healthy: 3; migrations that changed the schema: $migrated"
[ "$migrated" = 1 ]
"$PY" scripts/load_check.py spread --urls "$(IFS=,; echo "${urls[*]}")" --requests 60 \
  --concurrency 6 --database-url "$db_url"

step "container checks passed"
