#!/usr/bin/env bash
# What a new user gets from `pip install .` alone (no extras): the lean serving install, with no
# torch at all. A fresh venv, then every kind of command the README shows, with the runtime
# dependencies only:
#   - `from visinspect.client import Client` imports neither SQLAlchemy, FastAPI nor torch;
#   - `visinspect model build` says which extra it needs (and nothing else breaks);
#   - with an artifact built by the project's venv (the `model` extra), `visinspect classify PHOTO`
#     in-process (model in this process, row in DATABASE_URL), `visinspect serve`, then
#     `visinspect classify PHOTO --url ...` and the Python client.
# Usage: bash scripts/install-check.sh   (PIP_ARGS is passed to pip, as in the Makefile)
set -euo pipefail
cd "$(dirname "$0")/.."
project=$PWD
photo=$(ls "$project"/.venv/lib/python3.11/site-packages/skimage/data/coffee.png 2>/dev/null || true)
[ -n "$photo" ] || { echo "needs the dev venv's photos: run make test first" >&2; exit 1; }
work=$(mktemp -d)
server=""
cleanup() { [ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*"; }

step "fresh venv: pip install . (no extras)"
started=$SECONDS
python3 -m venv "$work/venv"
bin=$work/venv/bin
"$bin/pip" install --quiet --upgrade "pip>=25" 2>&1 | grep -v '^WARNING: Location' || true
# shellcheck disable=SC2086
"$bin/pip" install --quiet ${PIP_ARGS:-} "$project" 2>&1 | grep -v '^WARNING: Location' || true
"$bin/python" -c "import visinspect" || { echo "pip install . failed" >&2; exit 1; }
echo "installed in $((SECONDS - started)) s"
cd "$work"  # not the project: nothing may come from its source tree

step "the client imports no server-side package"
"$bin/python" - <<'PYEOF'
import sys
from visinspect.client import Client  # noqa: F401
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "fastapi", "starlette", "torch", "onnxruntime"})
assert not heavy, f"visinspect.client imported {heavy}"
print("visinspect.client: ok, none of sqlalchemy/fastapi/starlette/torch/onnxruntime loaded")
PYEOF

step "no torch installed; visinspect model build names the extra it needs"
"$bin/python" -c "from importlib.util import find_spec; assert find_spec('torch') is None and find_spec('onnx') is None; print('torch, onnx: not installed')"
if MODEL_DIR="$work/model" "$bin/visinspect" model build >"$work/build.log" 2>&1; then
  echo "model build succeeded without the model extra?" >&2; exit 1
fi
grep -q '"startup.failed"' "$work/build.log" && grep -q "visual-inspection-service\[model\]" "$work/build.log" \
  || { cat "$work/build.log"; exit 1; }
echo "model build without the extra: refused, naming pip install 'visual-inspection-service[model]'"
MODEL_DIR="$work/model" LOG_LEVEL=WARNING "$project/.venv/bin/visinspect" model build >/dev/null
export MODEL_DIR="$work/model"  # built by the project's venv; served by this one

step "visinspect classify, in-process"
DATABASE_URL="sqlite:///$work/in-process.db" LOG_LEVEL=WARNING \
  "$bin/visinspect" classify "$photo" --no-progress --format jsonl | tee "$work/in-process.jsonl"
"$bin/python" - "$work/in-process.jsonl" <<'PYEOF'
import json, sys
(line,) = [json.loads(l) for l in open(sys.argv[1])]
assert line["predictions"][0]["class_name"] == "espresso", line
assert line["record_id"] == 1, line  # recorded, as the server would
PYEOF

step "visinspect serve, then classify --url and the Python client"
port=$("$bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
DATABASE_URL="sqlite:///$work/server.db" PORT=$port LOG_LEVEL=WARNING "$bin/visinspect" serve >"$work/server.log" 2>&1 &
server=$!
deadline=$((SECONDS + 90))
until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "server exited" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { cat "$work/server.log"; echo "server not ready" >&2; exit 1; }
  sleep 0.5
done
"$bin/visinspect" classify "$photo" --url "http://127.0.0.1:$port" --no-progress --format jsonl | tee "$work/remote.jsonl"
"$bin/python" - "$work/remote.jsonl" "http://127.0.0.1:$port" "$photo" <<'PYEOF'
import json, sys
from visinspect.client import Client
(line,) = [json.loads(l) for l in open(sys.argv[1])]
assert line["predictions"][0]["class_name"] == "espresso", line
with Client(sys.argv[2]) as client:
    assert client.prediction(line["record_id"]).predictions[0].class_name == "espresso"
    assert client.predict(sys.argv[3]).predictions[0].class_name == "espresso"
    assert client.stats().total == 2
print("classify --url and Client: ok")
PYEOF

step "install check passed"
