#!/usr/bin/env bash
# Hash-locked requirements for the image (docker/requirements/*.txt), from the pins in
# pyproject.toml: `make lock` after changing a dependency. The image installs them with
# `pip install --require-hashes`, so no index (PyPI or the PyTorch CPU index) can substitute a
# file. serve.txt is universal; model.txt (torch's CPU build) is for x86_64 Linux, where the CPU
# wheel's hash is that of download.pytorch.org's file (on these machines: the same file, on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
out=docker/requirements
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python - "$work" <<'PYEOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
serve = project["project"]["dependencies"] + project["build-system"]["requires"]
model = serve + [
    "torch==2.13.0+cpu" if d == "torch==2.13.0" else d
    for d in project["project"]["optional-dependencies"]["model"]
]
open(f"{sys.argv[1]}/serve.in", "w").write("\n".join(serve) + "\n")
open(f"{sys.argv[1]}/model.in", "w").write("\n".join(model) + "\n")
PYEOF
common=(--generate-hashes --python-version 3.11 --no-header --quiet)
"$UV" pip compile "$work/serve.in" "${common[@]}" --universal -o "$out/serve.txt"
"$UV" pip compile "$work/model.in" "${common[@]}" --python-platform x86_64-manylinux_2_28 \
  --find-links "${PIP_FIND_LINKS:-/nonexistent}" \
  -o "$out/model.txt"
sed -i "s|-r $work/|-r |" "$out/serve.txt" "$out/model.txt"
echo "locked: $(grep -c '^[a-z]' "$out/serve.txt") serving and $(grep -c '^[a-z]' "$out/model.txt") build requirements"
