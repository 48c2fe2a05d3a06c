# syntax=docker/dockerfile:1
# convrs-exporter image: the package installed from this repository into a virtual
# environment (with PyMySQL, for MySQL and MariaDB), copied onto a slim Python base, run
# as a non-root user. No secrets are
# baked in: pass the database URL at run time (CONVRS_EXPORTER_DATABASE_URL, or
# CONVRS_EXPORTER_DATABASE_URL_FILE pointing at a mounted secret) and mount the
# configuration file, e.g. at /etc/convrs-exporter/config.yml.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir '.[mysql]'

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="convrs-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the Convrs platform's organization metrics"
RUN groupadd --system --gid 10001 convrs \
    && useradd --system --uid 10001 --gid convrs --no-create-home --shell /usr/sbin/nologin convrs
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 9653
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9653/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["convrs-exporter"]
