#!/usr/bin/env bash
# Database outage drill, run by hand: a throwaway PostgreSQL cluster is stopped under a
# running cohort-ingest and started again. Shows that requests answer 503 JSON with
# Retry-After within the request timeout, /readyz answers 503, the service recovers by
# itself (no restart), and SIGTERM then exits 0.
#
#   scripts/outage-drill.sh            # builds the debug binary if needed
#   BIN=target/release/cohort-ingest scripts/outage-drill.sh
#
# Needs PostgreSQL's server binaries (initdb, pg_ctl) and curl. Run as root, the
# cluster runs as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT=${PG_PORT:-55432}
APP_PORT=${APP_PORT:-18080}
REQUEST_TIMEOUT_SECS=${REQUEST_TIMEOUT_SECS:-5}
TOKEN=drill-admin-token
API=http://127.0.0.1:$APP_PORT
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
BIN=${BIN:-target/debug/cohort-ingest}
[ -x "$BIN" ] || cargo build --quiet --bin cohort-ingest

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
say() { printf '%s  %s\n' "$(date +%T.%3N)" "$*"; }

DATA=$(mktemp -d /tmp/cohort-ingest-drill.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$DATA"
APP_PID=
cleanup() {
    [ -n "$APP_PID" ] && kill "$APP_PID" 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$DATA/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DATA"
}
trap cleanup EXIT

pg_start() { as_pg "$PG_BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/pg.log" -o "-p $PG_PORT -k $DATA -c listen_addresses=127.0.0.1" -w start >/dev/null; }
pg_stop() { as_pg "$PG_BIN/pg_ctl" -D "$DATA/pg" -m fast -w stop >/dev/null; }

# One request: prints status, time, Retry-After and body.
probe() {
    local method=$1 path=$2
    curl -s -o "$DATA/body" -D "$DATA/headers" -w '%{http_code} %{time_total}' -X "$method" \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        ${3:+-d "$3"} "$API$path" > "$DATA/status" || echo "000 -" > "$DATA/status"
    local retry
    retry=$(grep -i '^retry-after:' "$DATA/headers" | tr -d '\r' | cut -d' ' -f2 || true)
    read -r code secs < "$DATA/status" || true  # no trailing newline
    say "$method $path -> $code in ${secs}s${retry:+, Retry-After: $retry}  $(head -c 200 "$DATA/body")"
}

say "throwaway cluster on 127.0.0.1:$PG_PORT ($PG_BIN)"
as_pg "$PG_BIN/initdb" -D "$DATA/pg" -U postgres -A trust >/dev/null
pg_start

say "cohort-ingest on $API (REQUEST_TIMEOUT_SECS=$REQUEST_TIMEOUT_SECS, DB_ACQUIRE_TIMEOUT_SECS=2)"
DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/cohort_ingest_drill LISTEN_ADDR=127.0.0.1:$APP_PORT \
    ADMIN_TOKEN=$TOKEN REQUEST_TIMEOUT_SECS=$REQUEST_TIMEOUT_SECS DB_ACQUIRE_TIMEOUT_SECS=2 \
    LOG_FORMAT=json RUST_LOG=warn "$BIN" serve 2> "$DATA/app.log" &
APP_PID=$!
for _ in $(seq 1 100); do curl -fs "$API/healthz" >/dev/null && break; sleep 0.1; done

say "--- database up"
probe GET /readyz
probe POST /admin/workspaces '{"name":"before the outage"}'

say "--- stopping PostgreSQL"
pg_stop
probe GET /readyz
probe GET /admin/workspaces
probe POST /admin/workspaces '{"name":"during the outage"}'

say "--- starting PostgreSQL again (cohort-ingest is not restarted)"
pg_start
started=$(date +%s.%N)
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/readyz")" = 200 ]; do sleep 0.1; done
say "ready again $(printf "%.2f" "$(echo "$(date +%s.%N) - $started" | bc)")s after PostgreSQL started"
probe GET /readyz
probe GET /admin/workspaces
probe POST /admin/workspaces '{"name":"after the outage"}'

say "--- SIGTERM"
kill -TERM "$APP_PID"
status=0
wait "$APP_PID" || status=$?
APP_PID=
say "cohort-ingest exited with status $status"
say "warnings it logged: $(grep -c '"level":"WARN"' "$DATA/app.log" || true), errors: $(grep -c '"level":"ERROR"' "$DATA/app.log" || true)"
