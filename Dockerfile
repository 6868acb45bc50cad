# rnnserve runtime image: onnxruntime + LitServe, no torch. Serves the bundled models/ on port 8000.
#   docker build -t rnnserve .
#   docker run -p 8000:8000 rnnserve
# BASE: any Debian-like image with python3 (3.10+) and its venv module; scripts/docker-engine makes one
# with debootstrap for machines that reach no image registry (then: --build-arg BASE=rnnserve-base:bookworm).
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY rnnserve rnnserve
COPY service service
COPY export export
COPY loadtest loadtest
RUN pip install --no-deps . && pip uninstall -y pip setuptools

FROM ${BASE}
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Streamed, batched serving of LSTM/GRU text models with ONNX Runtime"
RUN useradd --create-home --uid 10001 rnnserve && \
    mkdir -p /var/lib/rnnserve && chown rnnserve:rnnserve /var/lib/rnnserve && chmod 700 /var/lib/rnnserve
COPY --from=build /opt/venv /opt/venv
COPY --chown=rnnserve:rnnserve models /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODELS=/app/models \
    RNNSERVE_STATE_DIR=/var/lib/rnnserve \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=8000
WORKDIR /app
# the session store (SQLite): mount a volume here to keep conversations across containers
VOLUME ["/var/lib/rnnserve"]
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RNNSERVE_PORT', '8000') + '/health', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["rnnserve", "serve"]
