# Visual Inspection Service: a lean CPU-only serving image. The build stage has PyTorch and builds
# the model artifact (ONNX graph + manifest, measured against PyTorch); the runtime stage has neither
# torch nor the weights package, only the artifact and what serves it.
#   docker build -t visinspect .                      (torch from the PyTorch CPU wheel index)
#   docker build --build-arg TORCH_INDEX_URL= ...     (no index: torch from docker/wheels/)
# Every requirement is installed from docker/requirements/*.txt with --require-hashes (`make lock`
# writes them from pyproject.toml): no index can substitute a file. The base is pinned by digest;
# PYTHON_IMAGE overrides it (CI here builds on a locally made stand-in).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Where CPU-only torch wheels come from. PyPI's own torch wheel is a multi-gigabyte CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120
WORKDIR /src
# binutils: `strip`, below. tuxpaint-stamps-default: 418 photographs that calibrate and measure the
# int8 graph (too few without them: MODEL_PRECISION=auto would record int8 as not built and serve
# fp32). Only in this stage.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils=2.40-2 \
    tuxpaint-stamps-default=2022.06.04-1 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# /opt/venv serves (copied into the runtime image); /opt/build builds the model (torch).
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build
# Wheels placed in docker/wheels/ (may be none) are used when their hash is the locked one.
COPY docker/wheels/ /wheels/
# Dependencies first, from the hash-locked files only: these layers survive source changes.
COPY docker/requirements/ /requirements/
RUN /opt/venv/bin/pip install --require-hashes --no-deps --find-links /wheels -r /requirements/serve.txt \
 && /opt/build/bin/pip install --require-hashes --no-deps --find-links /wheels \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /requirements/model.txt \
 && if /opt/build/bin/pip list 2>/dev/null | grep -qi '^nvidia'; then echo "CUDA libraries in the build: use a CPU torch wheel" >&2; exit 1; fi
COPY pyproject.toml README.md ./
COPY src ./src
# Build the artifact (checks the weights' SHA-256, exports, proves the graph gives PyTorch's answers
# on real photographs), then load it with the serving venv, which has no torch, as a container will.
# Drop what a server never uses: source maps; ONNX Runtime's C library (the Python module carries its
# own copy), its converters and quantizer (the build venv has them); the debug symbols of uvloop and
# SQLAlchemy's extensions (others are patched by auditwheel and must stay as they are); pip, setuptools.
# Then load the model once more, from what is left.
ENV MODEL_DIR=/opt/visinspect/model
RUN /opt/build/bin/pip install --no-deps --no-build-isolation . \
 && /opt/build/bin/visinspect model build \
 && /opt/venv/bin/pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/python -c "import sys; from visinspect.config import Settings; from visinspect.inference.classifier import load_classifier; load_classifier(Settings(_env_file=None)); assert 'torch' not in sys.modules" \
 && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && find "$site/fastapi_swagger" -name '*.map' -delete \
 && rm -rf "$site/onnxruntime/capi/libonnxruntime.so."* "$site/onnxruntime/transformers" "$site/onnxruntime/tools" \
    "$site/onnxruntime/quantization" "$site/onnxruntime/datasets" \
 && find "$site/uvloop" "$site/sqlalchemy" -name '*.so' -type f -exec strip --strip-unneeded {} + \
 && /opt/venv/bin/python -c "import uvloop, sqlalchemy.engine, sqlalchemy.orm; from visinspect.config import Settings; from visinspect.inference.classifier import load_classifier; load_classifier(Settings(_env_file=None))" \
 && /opt/venv/bin/pip uninstall --yes --quiet setuptools pip

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 visinspect \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /app --shell /usr/sbin/nologin visinspect \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/visinspect/images
# /var/lib/visinspect/images: where compose and Kubernetes mount the kept images (IMAGE_STORE_DIR);
# a new named volume takes this directory's owner.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/visinspect/model /opt/visinspect/model
COPY docker/entrypoint.sh /usr/local/bin/visinspect-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_WAIT_S=60 \
    LOG_FORMAT=json \
    MODEL_DIR=/opt/visinspect/model \
    DATABASE_URL=sqlite:////app/visinspect.db
USER 10001:10001
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["visinspect-entrypoint"]
