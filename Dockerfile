# One image for every role: `docker run IMAGE [all|webserver|daemon|runner]`.
# Build: docker build -t dagster-code-runner .
# Behind a TLS-inspecting proxy: build FROM a base image that has its CA in
# /usr/local/share/ca-certificates/ (as corporate base images do; --build-arg BASE=...), or
# with buildah/podman mount it: -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro.
# Downloads during the build and at run time trust the image's system CA store.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# Python 3.11 from Debian; uv from PyPI (the runner calls the uv binary its package ships).
# A file asking for another Python gets it from uv on first use, kept in the state volume
# (/var/lib/runner/python); air-gapped sites set UV_PYTHON_DOWNLOADS=never (see README).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates util-linux tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 dagster \
 && mkdir -p /opt/dagster /var/lib/runner /var/cache/uv /app \
 && chown dagster:dagster /opt/dagster

WORKDIR /app
# The entrypoint starts as root: the runner runs each location as a user of its own (ids
# 20000-29999), and the webserver and the daemon run as dagster (uid 10001), as do the files
# the runner writes on the share.
ENV RUNNER_SERVICE_USER=dagster \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    UV_CACHE_DIR=/var/cache/uv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    RUNNER_SHARE=/opt/dagster \
    RUNNER_STATE_DIR=/var/lib/runner \
    DAGSTER_WEBSERVER_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1

# Dependencies first (a cached layer), then the code. Bytecode is compiled here: the roles
# run as other users, who cannot write __pycache__ into /app, and each imports Dagster at
# every start (about 2 s of CPU each from bytecode, twice that from source).
COPY pyproject.toml uv.lock ./
RUN if [ -f /run/host-ca.crt ]; then export SSL_CERT_FILE=/run/host-ca.crt PIP_CERT=/run/host-ca.crt; fi \
 && python3 -m venv /app/.venv \
 && /app/.venv/bin/pip install --quiet --no-cache-dir "uv>=0.13,<0.14" \
 && uv sync --frozen --no-dev --no-install-project --python /app/.venv/bin/python
COPY README.md entrypoint.py ./
COPY runner ./runner
RUN if [ -f /run/host-ca.crt ]; then export SSL_CERT_FILE=/run/host-ca.crt; fi \
 && uv sync --frozen --no-dev --python /app/.venv/bin/python

# The share (code_location/ and dagster_home/), built environments and downloaded Pythons,
# and the uv cache.
VOLUME ["/opt/dagster", "/var/lib/runner", "/var/cache/uv"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import sys, urllib.request as u; u.urlopen('http://127.0.0.1:3000/server_info', timeout=4)" || exit 1
ENTRYPOINT ["tini", "-s", "--", "python", "entrypoint.py"]
CMD ["all"]
