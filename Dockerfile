# syntax=docker/dockerfile:1
#
# defender-connectivity-exporter: docs/operations.md ("Container image").
#
#   docker build -t defender-connectivity-exporter .
#   docker run -d -p 10100:10100 defender-connectivity-exporter      # the built-in catalogue
#   docker run -d -p 10100:10100 \
#     -v /srv/dce/config.yml:/etc/defender-connectivity-exporter/config.yml:ro \
#     defender-connectivity-exporter                                 # the site's configuration
#
# No secrets are baked in: proxy credentials belong in the mounted config file,
# TLS keys and basic-auth hashes in a mounted --web.config.file.

# The base image is pinned by tag (what it is) and digest (exactly which build: a tag is rebuilt
# for every Debian point release). Both stages use the same one. To refresh it, take the newest
# python:3.11.N-slim-bookworm tag and read the digest of its multi-platform index,
#   docker buildx imagetools inspect python:3.11.N-slim-bookworm     # the "Digest:" line
# (or `crane digest python:3.11.N-slim-bookworm`), then replace tag and digest in both FROM lines.

# ---------------------------------------------------------------- build: one wheel per dependency
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------- run: the wheels, a non-root user
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

LABEL org.opencontainers.image.title="defender-connectivity-exporter" \
      org.opencontainers.image.description="Prometheus exporter: can Microsoft Defender Antivirus reach its cloud services, and if not, why" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_PORT=10100 \
    DEFENDER_EXPORTER_CONFIG=/etc/defender-connectivity-exporter/config.yml

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels defender-connectivity-exporter \
 && useradd --system --uid 10100 --user-group --no-create-home --shell /usr/sbin/nologin exporter \
 && mkdir -p /etc/defender-connectivity-exporter

COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# Mount the configuration here (read-only), optional; see docs/operations.md.
VOLUME ["/etc/defender-connectivity-exporter"]

USER 10100:10100
EXPOSE 10100

# /-/healthy needs no credentials; try HTTPS first (the certificate is not checked: this
# is the container talking to itself), then plain HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request\nport = os.environ.get('HEALTHCHECK_PORT', '10100')\nfor scheme in ('https', 'http'):\n    try:\n        context = ssl._create_unverified_context() if scheme == 'https' else None\n        urllib.request.urlopen(f'{scheme}://127.0.0.1:{port}/-/healthy', timeout=3, context=context)\n        sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)"]

# With no arguments: the mounted /etc/defender-connectivity-exporter/config.yml if there is one,
# else the built-in catalogue, as the binary does without --config.file (docker-entrypoint.sh).
ENTRYPOINT ["docker-entrypoint.sh"]
CMD []
