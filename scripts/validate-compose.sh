#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine: `docker-compose config -q`, for the
# default services and for the `gpu` and `s3` profiles.
#
# Uses `docker-compose` from PATH; when absent and running as root on a Debian-like system it
# installs Debian's docker-compose package (1.29.x, which reads the Compose Specification:
# profiles, depends_on conditions, deploy.resources.reservations.devices).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_FILE_PATH=docker-compose.yml

if ! command -v docker-compose >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "docker-compose not found: installing Debian's docker-compose package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # --no-install-recommends: the package recommends docker.io (a whole engine), which
        # `config` does not need.
        apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    else
        echo "error: docker-compose is not installed." >&2
        echo "  Install it (Debian/Ubuntu: 'sudo apt-get install docker-compose', or Docker's" >&2
        echo "  compose plugin and put a 'docker-compose' wrapper on PATH) and run again." >&2
        exit 1
    fi
fi

version="$(docker-compose version --short 2>/dev/null || docker-compose --version)"
echo "using docker-compose ${version}"

docker-compose -f "${COMPOSE_FILE_PATH}" config -q
echo "default services: ok"

# --profile exists from docker-compose 1.28 on (and in every v2).
help_text="$(docker-compose --help 2>&1 || true)"
if [[ "${help_text}" == *--profile* ]]; then
    docker-compose -f "${COMPOSE_FILE_PATH}" --profile gpu config -q
    echo "profile gpu: ok"
    RELIGHT_STORAGE_URL=s3://relight docker-compose -f "${COMPOSE_FILE_PATH}" --profile s3 config -q
    echo "profile s3: ok"
else
    echo "profile gpu: skipped (this docker-compose has no --profile option)"
fi

echo "compose file valid"
