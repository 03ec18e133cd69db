# Visual Inspection Service: CPU-only image with the model weights baked in.
#   docker build -t visinspect .                      (torch from the PyTorch CPU wheel index)
#   docker build --build-arg TORCH_INDEX_URL= ...     (no index: torch from docker/wheels/)
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Where CPU-only torch wheels come from. PyPI's own torch wheel is a multi-gigabyte CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120
WORKDIR /src
RUN python3 -m venv /opt/venv
# Wheels placed in docker/wheels/ (may be none) are preferred to downloads.
COPY docker/wheels/ /wheels/
COPY pyproject.toml README.md ./
# Dependencies first, pinned in pyproject.toml: this layer survives source changes.
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
 && if /opt/venv/bin/pip list 2>/dev/null | grep -qi '^nvidia'; then echo "CUDA libraries in the image: use a CPU torch wheel" >&2; exit 1; fi
COPY src ./src
# Install the service; load the model once, which checks the weights against their pinned SHA-256,
# exports the ONNX graph and proves it matches PyTorch, so containers start from the cached export;
# then drop what a server never uses (torch's C++ headers and test binaries, source maps, pip).
ENV MODEL_CACHE_DIR=/opt/visinspect/model-cache
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -c "from visinspect.config import Settings; from visinspect.inference.model import load_classifier; load_classifier(Settings(_env_file=None))" \
 && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/include" "$site/torch/test" \
 && find "$site/swagger_ui_bundle" -name '*.map' -delete \
 && /opt/venv/bin/pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 visinspect \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /app --shell /usr/sbin/nologin visinspect
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/visinspect/model-cache /opt/visinspect/model-cache
COPY docker/entrypoint.sh /usr/local/bin/visinspect-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WORKERS=1 \
    DATABASE_WAIT_S=60 \
    LOG_FORMAT=json \
    MODEL_CACHE_DIR=/opt/visinspect/model-cache \
    DATABASE_URL=sqlite:////app/visinspect.db
USER 10001:10001
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["visinspect-entrypoint"]
