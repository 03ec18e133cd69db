# The two commands of the README: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Elsewhere, `make run PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"` takes
# torch's CPU wheel instead of PyPI's CUDA build. (On these machines $PIP_FIND_LINKS holds it.)
PIP_ARGS ?=

.PHONY: run model test imports docs docs-build audit install-check chromium containers bench bench-heads bench-teach bench-quality bench-anomaly bench-smoke bench-history bench-history-smoke footprint photos quantization openvino reliability lock axe lint typecheck pytest postgres hey clean

# The first run builds the model artifact (MODEL_DIR, default ~/.cache/visinspect/model); later runs
# find it up to date and start at once. Uploads are kept in ./visinspect-images (the review queue
# shows them, detectors learn from them) unless IMAGE_STORE_DIR says otherwise (empty: not kept).
run: model
	LOG_FORMAT=$${LOG_FORMAT:-console} IMAGE_STORE_DIR=$${IMAGE_STORE_DIR-./visinspect-images} $(BIN)/visinspect serve

model: $(VENV)/.installed
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/visinspect model build --if-missing

test: $(VENV)/.installed-dev postgres chromium axe lint typecheck imports docs-build pytest

# Installed packages against PyPI's advisories; fails on a vulnerability that has a fix.
audit: $(VENV)/.installed-dev
	$(BIN)/python scripts/audit.py

# A fresh venv with `pip install .` (no extras) runs the README's commands: runtime deps suffice.
install-check: $(VENV)/.installed-dev
	PIP_ARGS="$(PIP_ARGS)" bash scripts/install-check.sh

# The container deliverables (Dockerfile, compose, Kubernetes), built and run for real; needs root.
containers: $(VENV)/.installed-dev postgres
	bash scripts/container-ci.sh

# Performance: ceilings, service under load, naive baseline, targets (docs/benchmarks.md); then
# what an active and a shadow head cost /predict (bench/heads.py, docs/teaching.md). `photos`
# first, so that the model build (`auto`) can measure an int8 graph.
bench: $(VENV)/.installed-dev photos model postgres hey
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.heads
	$(BIN)/python -m bench.detectors

# What an active and a shadow head cost /predict at c=8 (docs/teaching.md).
bench-heads: $(VENV)/.installed-dev photos model postgres hey
	$(BIN)/python -m bench.heads

# Teaching from few photos on the tuxpaint stamps, and training time (docs/teaching.md).
bench-teach: $(VENV)/.installed-dev model photos
	$(BIN)/python -m bench.teach

# Detectors trained from good shots of real products, scored on drawn defects (docs/anomaly.md).
bench-anomaly: $(VENV)/.installed-dev model photos
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m bench.anomaly

# /health/live while four quality requests run on 1,000 classes x 20,000 answers (docs/reliability.md);
# BEFORE=<another checkout's src> measures it too, side by side.
bench-quality: $(VENV)/.installed-dev model postgres
	$(BIN)/python -m bench.quality $(if $(BEFORE),--before $(BEFORE))

bench-smoke: $(VENV)/.installed-dev model postgres hey
	$(BIN)/python -m bench.load --smoke
	$(BIN)/python -m bench.heads --seconds 1 --rounds 1
	$(BIN)/python -m bench.detectors --seconds 1 --rounds 2

# The history at scale (bench/history.py): 10 M realistic rows (kept between runs: the fill takes
# minutes), then every history, statistics, quality and drift call timed through the server.
HISTORY_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/visinspect_history
HISTORY_ROWS ?= 10000000
bench-history: $(VENV)/.installed-dev model postgres
	$(BIN)/python -m bench.history run --rows $(HISTORY_ROWS) --database-url $(HISTORY_DATABASE_URL)

bench-history-smoke: $(VENV)/.installed-dev model postgres
	$(BIN)/python -m bench.history run --fresh --rows 20000 --requests 3 \
	  --database-url postgresql+psycopg://postgres@127.0.0.1:5432/visinspect_history_smoke
	$(BIN)/python -m bench.history remigrate \
	  --database-url postgresql+psycopg://postgres@127.0.0.1:5432/visinspect_history_smoke

# Soak at twice the capacity, 2 GB uploads, benign traffic under attack, the decode-bomb corpus
# against the budgets (docs/reliability.md). SOAK_SECONDS=60 by default.
# One serving process: start to ready, RSS after warm-up, no torch mapped (docs/model.md).
footprint: $(VENV)/.installed-dev model
	$(BIN)/python -m bench.footprint --check

# Debian's packages of photographs (tuxpaint stamps, OpenCV's samples): int8 calibration and evaluation.
photos:
	@test -d /usr/share/tuxpaint/stamps -a -d /usr/share/doc/opencv-doc/examples/data || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default opencv-doc >/dev/null)

# int8 recipes side by side on the same photographs: agreement with fp32 and speed (docs/model.md).
quantization: $(VENV)/.installed-dev photos
	$(BIN)/python -m bench.quantization

# OpenVINO beside ONNX Runtime on the artifact's graphs (docs/benchmarks.md): not a dependency of
# the service, so installed into .cache/openvino for this run only.
OPENVINO_VERSION := 2026.4.1
openvino: $(VENV)/.installed-dev model photos
	@test -d .cache/openvino/openvino || $(BIN)/pip install -q --target .cache/openvino --no-deps openvino==$(OPENVINO_VERSION) openvino-telemetry==2025.2.0
	PYTHONPATH=.cache/openvino $(BIN)/python -m bench.openvino

reliability: $(VENV)/.installed-dev model postgres hey
	$(BIN)/python -m bench.reliability --seconds $${SOAK_SECONDS:-60}

# The image's hash-locked requirements (docker/requirements/*.txt) from pyproject.toml's pins.
lock: $(VENV)/.installed-dev
	bash scripts/lock.sh

# The browser test drives Debian's Chromium (never `playwright install`, which downloads one).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# axe-core (npm) for the browser test's accessibility check; the version is pinned here.
AXE_CORE_VERSION := 4.14.1
axe:
	@test -f .cache/npm/node_modules/axe-core/axe.min.js || npm install --silent --no-save --no-audit --no-fund --prefix .cache/npm axe-core@$(AXE_CORE_VERSION)

hey:
	@command -v hey >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The architecture's import contracts ([tool.importlinter] in pyproject.toml).
imports: $(VENV)/.installed-dev
	$(BIN)/lint-imports

# The docs site (MkDocs Material): `make docs` serves it on http://127.0.0.1:8001 with live reload;
# `make test` builds it strictly (a broken link or anchor fails).
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .cache/site

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest

postgres:
	bash scripts/ensure-postgres.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=25"

# The serving requirements pyproject.toml does not pin (idna, anyio, ...) are installed at the
# versions the image locks (docker/requirements/serve.txt, without its hashes, as pip
# constraints): the tests run on what the image serves with, and a new release of one of them
# on PyPI changes neither until `make lock`.
LOCKED := $(VENV)/locked-serve.txt
$(LOCKED): docker/requirements/serve.txt | $(VENV)/bin/python
	sed -e '/^ *--hash=/d' -e '/^ *#/d' -e 's/ *\\$$//' $< > $@

$(VENV)/.installed: pyproject.toml $(LOCKED) | $(VENV)/bin/python
	$(BIN)/pip install --quiet $(PIP_ARGS) -c $(LOCKED) -e ".[model]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCKED) | $(VENV)/bin/python
	$(BIN)/pip install --quiet $(PIP_ARGS) -c $(LOCKED) -e ".[dev]"
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .cache/site
