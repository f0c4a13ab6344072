#!/usr/bin/env bash
# Runs ruff, bandit and the whole pytest suite against a throwaway PostgreSQL and Redis started
# here, on loopback, and stops them on exit (also on failure or Ctrl-C).
#
# Outside CI a missing server binary or browser makes the tests that need it skip with a
# one-line reason; with CI=true it is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CI="${CI:-false}"
PG_PORT="${TEST_PG_PORT:-55432}"
REDIS_PORT="${TEST_REDIS_PORT:-56379}"
WORK=$(mktemp -d /tmp/portal-test.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PGDATA=""
PGBIN=""

cleanup() {
    local status=$?
    if [ -n "$PGDATA" ] && [ -f "$PGDATA/postmaster.pid" ]; then
        (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1) || true
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

missing() {
    if [ "$CI" = "true" ]; then
        echo "error: $1 (CI=true: this is a failure, not a skip)" >&2
        exit 1
    fi
    echo "skip: $1"
}

# --- PostgreSQL ---------------------------------------------------------------------------
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && [ "$(id -u)" != 0 ]; then
    missing "the throwaway PostgreSQL is started as the postgres user, which needs root; tests run on SQLite"
elif [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && id postgres >/dev/null 2>&1; then
    PGDATA="$WORK/pg"
    mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    (cd / && runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$WORK/initdb.log" 2>&1) \
        || { cat "$WORK/initdb.log"; exit 1; }
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/log" -w start \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PGDATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200") >/dev/null \
        || { cat "$PGDATA/log"; exit 1; }
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres portal
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/portal"
    echo "==> PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
else
    missing "PostgreSQL server binaries not found (apt-get install postgresql); tests run on SQLite"
fi

# --- Redis --------------------------------------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --databases 256 \
        --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
    PIDS+=($!)
    redis_up=false
    for _ in $(seq 50); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$REDIS_PORT") 2>/dev/null; then redis_up=true; break; fi
        sleep 0.1
    done
    if $redis_up; then
        export TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
        echo "==> Redis on 127.0.0.1:$REDIS_PORT"
    else
        cat "$WORK/redis.log" >&2 || true
        missing "redis-server did not start on 127.0.0.1:$REDIS_PORT"
    fi
else
    missing "redis-server not found (apt-get install redis-server); Redis and worker tests skip"
fi

# --- Browser ------------------------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    export TEST_CHROMIUM=/usr/bin/chromium
else
    missing "Chromium not found (apt-get install chromium); browser tests skip"
fi

# --- gettext ------------------------------------------------------------------------------
# tests/test_i18n.py runs makemessages (xgettext) to prove every string is in the catalogue.
command -v xgettext >/dev/null 2>&1 \
    || missing "gettext not found (apt-get install gettext); the translation catalogue test skips"

# --- the debian12 test guest ---------------------------------------------------------------
# tests/provisioning/test_real_vm.py boots Debian with real cloud-init. Its image is built once
# per machine (about two minutes, cached in ~/.cache/gpu-portal/): start that now, in the
# background, so it passes beside the rest of the suite; the test waits for it.
if [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null 2>&1; then
    export PORTAL_DEBIAN_GUEST_BUILD="$WORK/debian-guest"
    mkdir -p "$PORTAL_DEBIAN_GUEST_BUILD"
    (tests/provisioning/guests/build-debian.sh >"$PORTAL_DEBIAN_GUEST_BUILD/path" \
        2>"$PORTAL_DEBIAN_GUEST_BUILD/log"; echo $? >"$PORTAL_DEBIAN_GUEST_BUILD/rc") &
    PIDS+=($!)
fi

# --- libvirt ------------------------------------------------------------------------------
# libvirt-python (the `libvirt` dependency group) builds against libvirt-dev; its tests use the
# in-process test:///default driver, so no daemon is started. bootstrap.sh syncs the group too;
# this covers running this script alone right after installing libvirt-dev (a no-op otherwise).
if pkg-config --exists libvirt 2>/dev/null; then
    UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=.venv .tools/bin/uv sync --frozen \
        --compile-bytecode --group libvirt --python .venv/bin/python --quiet
else
    missing "libvirt-dev not installed (apt-get install libvirt-dev pkg-config); libvirt tests skip"
fi

# The test settings (tests/settings.py) give every other variable a safe default for a test run;
# what is exported here or by the caller wins. `python -m django` (not manage.py, which turns
# DEBUG on when SECRET_KEY is unset) runs the commands below with the same settings as pytest.
export CI DJANGO_SETTINGS_MODULE=tests.settings
export PORTAL_VAR_DIR="$WORK/var"
export STATIC_ROOT="$WORK/static"   # collected: the suite serves hashed names as production does
mkdir -p "$PORTAL_VAR_DIR"
.venv/bin/python -m django collectstatic --noinput -v0

if [ "${LINT:-1}" = "1" ]; then   # LINT=0 skips ruff and bandit while iterating on a few tests
    echo "==> ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    echo "==> bandit"
    .venv/bin/bandit -c pyproject.toml -r portal billing -q
fi

echo "==> migrations are up to date"
.venv/bin/python -m django makemigrations --check --dry-run >/dev/null \
    || { echo "error: models changed without a migration (make migrations)" >&2; exit 1; }

# pytest runs in parallel with pytest-xdist, one process more than there are cores (much of the
# suite waits: on browsers, workers, booting guests), or TEST_WORKERS=N (0 for one process), each
# with its own test database and its own eight databases on the one Redis server
# (tests/conftest.py, redis_db). Tests sharing a daemon stay on one worker (tests/conftest.py,
# GROUPS).
echo "==> pytest"
.venv/bin/python -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-$(( $(nproc) + 1 ))}" \
    --durations=25 "$@"
