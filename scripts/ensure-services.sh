#!/usr/bin/env bash
# What the tests need besides Python packages: Prometheus + promtool, PostgreSQL and MariaDB
# up, Chromium, and Grafana's formatter from npm.
# Installs or starts them when missing (as root, or through sudo where it is set up).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "ensure-services: installing prometheus (for prometheus and promtool)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq prometheus >/dev/null
fi

port_up() { python3 - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}
pg_up() { port_up 5432; }
mariadb_up() { port_up 3306; }

if ! pg_up; then
    echo "ensure-services: starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
    pg_up || { echo "ensure-services: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

if ! mariadb_up; then
    if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
        echo "ensure-services: installing MariaDB"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mariadb-server >/dev/null
    fi
    echo "ensure-services: starting MariaDB"
    as_root service mariadb start >/dev/null
    for _ in $(seq 1 30); do mariadb_up && break; sleep 1; done
    mariadb_up || { echo "ensure-services: MariaDB did not come up on 127.0.0.1:3306" >&2; exit 1; }
fi

# A real browser for the Organization Metrics page's test (Debian's chromium package).
if ! command -v chromium >/dev/null; then
    echo "ensure-services: installing chromium"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

# Grafana's own value formatter, for the dashboard's display tests (the version the compose
# file's Grafana ships). Node and npm come with this machine kind; npm reaches the registry.
GRAFANA_DATA="${GRAFANA_DATA:-$(dirname "$0")/../.cache/grafana-data}"
if [ ! -f "$GRAFANA_DATA/node_modules/@grafana/data/package.json" ]; then
    if ! command -v npm >/dev/null; then
        echo "ensure-services: installing node and npm"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "ensure-services: installing @grafana/data 11.3.0 (npm)"
    mkdir -p "$GRAFANA_DATA"
    (cd "$GRAFANA_DATA" && npm install --silent --no-audit --no-fund --no-save @grafana/data@11.3.0 >/dev/null)
fi
