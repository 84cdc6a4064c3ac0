#!/usr/bin/env bash
# Make sure a Postgres and a Redis answer on this machine, and that the given databases exist.
#
#   scripts/ensure-services.sh [DBNAME...]        e.g. scripts/ensure-services.sh relight relight_test
#
# Idempotent: services that already answer are used as they are. When one does not answer, is
# meant to be local, and we are root with apt-get (a fresh Debian machine, CI), it is installed
# from Debian's packages and started without systemd:
#   - postgresql: the packaged cluster is started with pg_ctlcluster, and loopback TCP
#     connections (127.0.0.1/32, ::1/128) are set to `trust` in its pg_hba.conf, so that the
#     password-less `postgres` user works from 127.0.0.1. This is only done to a cluster this
#     script installed (it leaves a marker comment in pg_hba.conf), never to one found there.
#   - redis-server: started as a daemon on 127.0.0.1, with persistence off.
#
# Environment (defaults): PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres (PGPASSWORD is honoured),
# REDIS_HOST=127.0.0.1 REDIS_PORT=6379, ENSURE_SERVICES_TIMEOUT=30 (seconds to wait for each).
set -euo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
TIMEOUT_S="${ENSURE_SERVICES_TIMEOUT:-30}"
REDIS_LOG="${TMPDIR:-/tmp}/relight-redis-$(id -u)-${REDIS_PORT}.log"
export PGHOST PGPORT PGUSER

HBA_MARKER="# relight scripts/ensure-services.sh: loopback trust"

log() { echo "ensure-services: $*" >&2; }
die() {
    echo "ensure-services: error: $*" >&2
    exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }
can_apt() { is_root && command -v apt-get >/dev/null 2>&1; }

is_local_host() {
    case "$1" in
        127.* | localhost | ::1 | /*) return 0 ;;
        *) return 1 ;;
    esac
}

# tcp_open HOST PORT: something accepts TCP connections there.
# shellcheck disable=SC2016 # $1/$2 expand in the child bash, on purpose
tcp_open() {
    if command -v timeout >/dev/null 2>&1; then
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
    else
        bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
    fi
}

# wait_until SECONDS COMMAND...: retry COMMAND every half second until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

pkg_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
    [[ "${status}" == "install ok installed" ]]
}

APT_UPDATED=0
# apt_install PACKAGE...: install those that are not installed yet (root + apt-get only).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "${pkg}" || missing+=("${pkg}")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    can_apt || die "need the Debian package(s) ${missing[*]}: run as root on a machine with apt-get, or install them yourself"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # Package scripts are chatty: keep their output, show it only when the install fails.
    local out
    out="$(mktemp)"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"${out}" 2>&1; then
        cat "${out}" >&2
        rm -f "${out}"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "${out}"
}

# ----------------------------------------------------------------------------------- Postgres

pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "${PGHOST}" -p "${PGPORT}" -t 3
    else
        tcp_open "${PGHOST}" "${PGPORT}"
    fi
}

# A server is there but still starting up (pg_isready exit status 1: "rejecting connections").
pg_starting() {
    command -v pg_isready >/dev/null 2>&1 || return 1
    local rc=0
    pg_isready -q -h "${PGHOST}" -p "${PGPORT}" -t 3 || rc=$?
    ((rc == 1))
}

# The newest installed PostgreSQL major version (from /usr/lib/postgresql/<ver>/bin/postgres).
pg_installed_version() {
    local dir ver best=""
    for dir in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "${dir}" ]] || continue
        ver="${dir#/usr/lib/postgresql/}"
        ver="${ver%%/*}"
        if [[ -z "${best}" ]] || ((ver > best)); then
            best="${ver}"
        fi
    done
    [[ -n "${best}" ]] || return 1
    echo "${best}"
}

# pg_cluster_field VER FIELD: a column of `pg_lsclusters -h` for cluster VER/main
# (3 = port, 4 = status).
pg_cluster_field() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v f="$2" '$1 == v && $2 == "main" { print $f }'
}

pg_trust_loopback() {
    local hba="$1"
    if grep -qF "${HBA_MARKER}" "${hba}"; then
        return 0
    fi
    log "setting loopback connections to trust in ${hba}"
    sed -E -i \
        -e 's#^([[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+#\1trust#' \
        "${hba}"
    # Lines missing from a customised file: add them first (the first matching line wins).
    local tmp
    tmp="$(mktemp)"
    {
        echo "${HBA_MARKER}"
        grep -qE '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "${hba}" \
            || echo "host    all             all             127.0.0.1/32            trust"
        grep -qE '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+trust' "${hba}" \
            || echo "host    all             all             ::1/128                 trust"
        cat "${hba}"
    } >"${tmp}"
    cat "${tmp}" >"${hba}" # keep the file's owner and mode
    rm -f "${tmp}"
}

start_local_postgres() {
    local installed_now=0 ver port status hba
    if ! pkg_installed postgresql; then
        can_apt || die "Postgres does not answer at ${PGHOST}:${PGPORT} and it cannot be installed here (needs root and apt-get).
  Install and start PostgreSQL yourself (Debian/Ubuntu: sudo apt-get install postgresql postgresql-client),
  allow the '${PGUSER}' user from ${PGHOST}, or point PGHOST/PGPORT at a running server."
        apt_install postgresql postgresql-client
        installed_now=1
    fi
    command -v pg_ctlcluster >/dev/null 2>&1 || die "pg_ctlcluster not found (package postgresql-common)"
    is_root || die "Postgres is installed but not running, and only root can start it: sudo pg_ctlcluster <version> main start"

    ver="$(pg_installed_version)" || die "postgresql is installed but no server binary was found under /usr/lib/postgresql"
    if [[ ! -d "/etc/postgresql/${ver}/main" ]]; then
        log "creating cluster ${ver}/main on port ${PGPORT}"
        pg_createcluster --port "${PGPORT}" "${ver}" main >/dev/null
        installed_now=1
    fi
    port="$(pg_cluster_field "${ver}" 3)"
    if [[ -n "${port}" && "${port}" != "${PGPORT}" ]]; then
        die "cluster ${ver}/main listens on port ${port}, not PGPORT=${PGPORT}: set PGPORT=${port}"
    fi

    hba="/etc/postgresql/${ver}/main/pg_hba.conf"
    if ((installed_now)) || grep -qF "${HBA_MARKER}" "${hba}"; then
        pg_trust_loopback "${hba}"
    fi

    status="$(pg_cluster_field "${ver}" 4)"
    if [[ "${status}" == online* ]]; then
        pg_ctlcluster --skip-systemctl-redirect "${ver}" main reload
    else
        log "starting PostgreSQL ${ver} (cluster main)"
        pg_ctlcluster --skip-systemctl-redirect "${ver}" main start
    fi
}

ensure_postgres() {
    if ! pg_ready; then
        if pg_starting; then
            log "Postgres at ${PGHOST}:${PGPORT} is starting up; waiting"
        elif is_local_host "${PGHOST}"; then
            start_local_postgres
        else
            die "Postgres does not answer at ${PGHOST}:${PGPORT} (a remote host: start it there, or set PGHOST)"
        fi
        wait_until "${TIMEOUT_S}" pg_ready \
            || die "Postgres at ${PGHOST}:${PGPORT} did not become ready within ${TIMEOUT_S}s"
    fi

    if (($# > 0)) && ! command -v psql >/dev/null 2>&1; then
        apt_install postgresql-client
    fi

    local db exists
    for db in "$@"; do
        [[ "${db}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "not a plain database name: '${db}'"
        exists="$(psql -X -q -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'")" \
            || die "cannot connect to Postgres at ${PGHOST}:${PGPORT} as '${PGUSER}' (authentication? set PGUSER/PGPASSWORD)"
        if [[ "${exists}" != "1" ]]; then
            log "creating database ${db}"
            # Another run may create it at the same moment: only its absence afterwards is an error.
            if ! createdb "${db}" 2>/dev/null; then
                exists="$(psql -X -q -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'")"
                [[ "${exists}" == "1" ]] || die "could not create database '${db}'"
            fi
        fi
    done

    if (($# > 0)); then
        local list
        list="$(printf '%s, ' "$@")"
        echo "postgres: ready at ${PGHOST}:${PGPORT} (databases: ${list%, })"
    else
        echo "postgres: ready at ${PGHOST}:${PGPORT}"
    fi
}

# -------------------------------------------------------------------------------------- Redis

redis_ready() {
    if command -v redis-cli >/dev/null 2>&1; then
        local answer
        answer="$(timeout 3 redis-cli -h "${REDIS_HOST}" -p "${REDIS_PORT}" ping 2>/dev/null || true)"
        [[ "${answer}" == "PONG" ]]
    else
        tcp_open "${REDIS_HOST}" "${REDIS_PORT}"
    fi
}

ensure_redis() {
    if ! redis_ready; then
        if tcp_open "${REDIS_HOST}" "${REDIS_PORT}"; then
            die "something listens on ${REDIS_HOST}:${REDIS_PORT} but does not answer PING with PONG (a password? another program?)"
        fi
        is_local_host "${REDIS_HOST}" \
            || die "Redis does not answer at ${REDIS_HOST}:${REDIS_PORT} (a remote host: start it there, or set REDIS_HOST)"
        if ! command -v redis-server >/dev/null 2>&1; then
            can_apt || die "Redis does not answer at ${REDIS_HOST}:${REDIS_PORT} and it cannot be installed here (needs root and apt-get).
  Install and start it yourself (Debian/Ubuntu: sudo apt-get install redis-server), or set REDIS_HOST/REDIS_PORT."
            apt_install redis-server
        fi
        # The package may have started its own service (systemd); otherwise start a daemon.
        if ! wait_until 2 redis_ready; then
            log "starting redis-server on 127.0.0.1:${REDIS_PORT}"
            redis-server --daemonize yes --bind 127.0.0.1 --port "${REDIS_PORT}" \
                --save "" --appendonly no --dir "${TMPDIR:-/tmp}" --logfile "${REDIS_LOG}"
        fi
        wait_until "${TIMEOUT_S}" redis_ready \
            || die "Redis at ${REDIS_HOST}:${REDIS_PORT} did not become ready within ${TIMEOUT_S}s (see ${REDIS_LOG})"
    fi
    echo "redis: ready at ${REDIS_HOST}:${REDIS_PORT}"
}

ensure_postgres "$@"
ensure_redis
