#!/usr/bin/env bash
# The hostile probe's harder cases, against a running instance. Each check prints one
# line, PASS or FAIL with what it saw; the exit status is the number of FAILs.
#
#   API=http://127.0.0.1:8080 ADMIN_TOKEN=… scripts/probe.sh          # fast part (seconds)
#   API=… ADMIN_TOKEN=… scripts/probe.sh --full                        # + slowloris, schemathesis
#
# Tell it the instance's limits when they are not the defaults:
#   HEADER_READ_TIMEOUT_SECS (10), IMPORT_STALL_TIMEOUT_SECS (30), BODY_LIMIT_BYTES (2097152)
# --full also takes SLOWLORIS_CONNECTIONS (2000), SERVER_PID (to report its memory) and
# SCHEMATHESIS_BUDGET_SECS (300); schemathesis runs only if `schemathesis` is on PATH.
#
# It creates a partner `probe<random>` and a workspace, and leaves them (use a
# throwaway instance). Needs bash, curl and jq; --full's slowloris needs python3.
set -uo pipefail

API=${API:-http://127.0.0.1:8080}
: "${ADMIN_TOKEN:?set ADMIN_TOKEN to the admin token of the instance}"
HEADER_READ_TIMEOUT_SECS=${HEADER_READ_TIMEOUT_SECS:-10}
IMPORT_STALL_TIMEOUT_SECS=${IMPORT_STALL_TIMEOUT_SECS:-30}
BODY_LIMIT_BYTES=${BODY_LIMIT_BYTES:-2097152}
FULL=false
[ "${1:-}" = --full ] && FULL=true

hostport=${API#http://}
HOST=${hostport%%:*}
PORT=${hostport##*:}
[ "$PORT" = "$hostport" ] && PORT=80
FAILS=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
# true when the awk expression over x holds
check() { awk -v x="$1" "BEGIN { exit (($2) ? 0 : 1) }"; }
admin() { curl -s -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
# status of a request, body in $BODY_FILE
BODY_FILE=$(mktemp)
trap 'rm -f "$BODY_FILE"' EXIT
status() { curl -s -o "$BODY_FILE" -w '%{http_code}' "$@"; }
is_json_message() { jq -e '.message | type == "string"' "$BODY_FILE" >/dev/null 2>&1; }

# ---- set-up ---------------------------------------------------------------------------
PARTNER=probe$RANDOM$RANDOM
PAK=$(admin -X POST "$API/admin/partners" -d "{\"name\":\"$PARTNER\"}" | jq -r .partner_api_key)
WS=$(admin -X POST "$API/admin/workspaces" -d '{"name":"probe"}' | jq -r .id)
DIK=$(admin -X POST "$API/admin/workspaces/$WS/partners/$PARTNER/data-import-keys" -d '{}' | jq -r .key)
if [ -z "$PAK" ] || [ "$PAK" = null ] || [ -z "$DIK" ] || [ "$DIK" = null ]; then
    echo "cannot set up a partner and workspace at $API (is ADMIN_TOKEN right?)" >&2
    exit 100
fi

# ---- NUL in paths and queries: the client's error, never a 5xx -------------------------
KEY=00000000-0000-0000-0000-000000000000
for spec in \
    "GET /admin/workspaces/$WS/cohorts?partner=%00" \
    "GET /admin/workspaces/$WS/cohorts/$PARTNER/%00" \
    "DELETE /admin/workspaces/$WS/cohorts/$PARTNER/%00" \
    "GET /admin/workspaces/$WS/cohorts/%00/x" \
    "GET /admin/workspaces/$WS/cohorts/$PARTNER/%00/imports" \
    "GET /admin/workspaces/$WS/cohorts/$PARTNER/%00/members" \
    "POST /admin/partners/%00/api-keys" \
    "DELETE /admin/partners/%00/api-keys/$KEY" \
    "GET /admin/workspaces/$WS/partners/%00/data-import-keys" \
    "POST /admin/workspaces/$WS/partners/%00/data-import-keys" \
    "DELETE /admin/workspaces/$WS/partners/%00/data-import-keys/$KEY" \
    "GET /admin/workspaces/not-a-uuid/cohorts"; do
    method=${spec%% *} path=${spec#* }
    code=$(status -X "$method" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' -d '{}' "$API$path")
    if [ "$code" = 400 ] && is_json_message; then pass "NUL: $method $path -> 400"; else fail "NUL: $method $path -> $code $(head -c 200 "$BODY_FILE")"; fi
done
for path in "/partners/%00/cohorts/users" "/partners/%00/cohorts"; do
    code=$(status -X POST -d '{}' "$API$path")
    if [ "$code" = 401 ] && is_json_message; then pass "NUL: POST $path -> 401"; else fail "NUL: POST $path -> $code"; fi
done

# ---- duplicate keys --------------------------------------------------------------------
body="{\"partner_api_key\":\"pak_bad\",\"partner_api_key\":\"$PAK\",\"client_secret\":\"$DIK\",\"cohort_id\":\"c\",\"cohort_changes\":[]}"
code=$(status -X POST -d "$body" "$API/partners/$PARTNER/cohorts/users")
[ "$code" = 401 ] && pass "duplicate partner_api_key (bad, then good) -> 401" || fail "duplicate partner_api_key -> $code"
body="{\"partner_api_key\":\"$PAK\",\"client_secret\":\"$DIK\",\"cohort_id\":\"a\",\"cohort\\u005fid\":\"b\",\"cohort_changes\":[]}"
code=$(status -X POST -d "$body" "$API/partners/$PARTNER/cohorts/users")
[ "$code" = 400 ] && pass "duplicate cohort_id (escaped) -> 400" || fail "duplicate cohort_id -> $code"
code=$(status -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"a","name":"b"}' "$API/admin/workspaces")
[ "$code" = 400 ] && pass "duplicate key in an admin body -> 400" || fail "duplicate key in an admin body -> $code"

# ---- a declared body over the limit: 413 at once ---------------------------------------
start=$(now)
answer=$(exec 3<>"/dev/tcp/$HOST/$PORT" && printf 'POST /admin/workspaces HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n' \
    "$ADMIN_TOKEN" $((BODY_LIMIT_BYTES + 1)) >&3 && timeout 5 head -c 12 <&3)
took=$(since "$start")
if [[ $answer == "HTTP/1.1 413" ]] && check "$took" 'x < 1'; then pass "declared body over the limit -> 413 in ${took}s"; else fail "declared body over the limit -> '$answer' in ${took}s"; fi

# ---- half a header: closed after the header-read timeout --------------------------------
start=$(now)
(exec 3<>"/dev/tcp/$HOST/$PORT" && printf 'GET /healthz HTTP/1.1\r\nHost: probe\r\nX-Slow: ' >&3 && timeout $((HEADER_READ_TIMEOUT_SECS + 10)) cat <&3 >/dev/null)
took=$(since "$start")
if check "$took" "x >= $HEADER_READ_TIMEOUT_SECS - 0.5 && x < $HEADER_READ_TIMEOUT_SECS + 3"; then
    pass "half a header: closed after ${took}s"
else
    fail "half a header: closed after ${took}s (HEADER_READ_TIMEOUT_SECS=$HEADER_READ_TIMEOUT_SECS)"
fi

# ---- a stalled NDJSON upload: the user store is usable again after the stall limit -----
exec 4<>"/dev/tcp/$HOST/$PORT"
printf 'POST /admin/workspaces/%s/users/import HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n{"external_id":"stalled"}\n' \
    "$WS" "$ADMIN_TOKEN" >&4
start=$(now)
sleep 0.5
freed=false
while check "$(since "$start")" "x < $IMPORT_STALL_TIMEOUT_SECS + 5"; do
    code=$(status -m $((IMPORT_STALL_TIMEOUT_SECS + 5)) -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d '{"users":[{"external_id":"after-stall"}]}' "$API/admin/workspaces/$WS/users/batch")
    if [ "$code" = 200 ]; then freed=true; break; fi
    sleep 0.2
done
took=$(since "$start")
stalled_answer=$(timeout 5 head -c 12 <&4)
exec 4<&-
if $freed && [[ $stalled_answer == "HTTP/1.1 408" ]]; then
    pass "stalled upload: 408, user store usable again after ${took}s"
else
    fail "stalled upload: store freed=$freed after ${took}s, the upload got '$stalled_answer'"
fi

$FULL || exit "$FAILS"

# ---- slowloris: many connections, half sending partial headers, half silent -------------
if command -v python3 >/dev/null; then
    SLOWLORIS_CONNECTIONS=${SLOWLORIS_CONNECTIONS:-2000} HOST=$HOST PORT=$PORT \
        HOLD_SECS=$((2 * HEADER_READ_TIMEOUT_SECS + 4)) SERVER_PID=${SERVER_PID:-} python3 - <<'PY'
import os, socket, subprocess, time
n, host, port = int(os.environ["SLOWLORIS_CONNECTIONS"]), os.environ["HOST"], int(os.environ["PORT"])
hold, pid = float(os.environ["HOLD_SECS"]), os.environ.get("SERVER_PID")
def rss():
    if not pid: return "?"
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return str(int(line.split()[1]) // 1024) + " MiB"
    return "?"
def held():
    # Connections the server side holds open (accepted or in its backlog), if ss can say.
    try:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True)
        return str(len(out.stdout.splitlines()))
    except OSError:
        return "?"
print(f"INFO  slowloris: before: server holds {held()} connections, RSS {rss()}")
socks, start = [], time.time()
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.setblocking(False)
        if i % 2 == 0:
            s.send(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nX-a: ")
        socks.append(s)
    except OSError:
        pass
print(f"INFO  slowloris: {len(socks)} of {n} connections opened in {time.time() - start:.1f}s "
      f"(half with partial headers, half silent); server holds {held()}, RSS {rss()}")
for waited in (hold / 2, hold):
    time.sleep(hold / 2)
    print(f"INFO  slowloris: {time.time() - start:.0f}s after the first: server holds {held()}, RSS {rss()}")
probe_start = time.time()
try:
    p = socket.create_connection((host, port), timeout=10)
    p.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
    ok = p.recv(12).startswith(b"HTTP/1.1 200")
except OSError:
    ok = False
print(("PASS" if ok else "FAIL") + f"  slowloris: a fresh request answered in {time.time() - probe_start:.2f}s")
for s in socks: s.close()
PY
else
    echo "SKIP  slowloris: no python3"
fi

# ---- schemathesis, within a time budget ---------------------------------------------------
if command -v schemathesis >/dev/null; then
    budget=${SCHEMATHESIS_BUDGET_SECS:-300}
    if timeout "$budget" schemathesis run "$API/openapi.json" -H "Authorization: Bearer $ADMIN_TOKEN" --checks all; then
        pass "schemathesis ($budget s budget)"
    elif [ $? = 124 ]; then
        pass "schemathesis: no failure within its $budget s budget"
    else
        fail "schemathesis found failures (above)"
    fi
else
    echo "SKIP  schemathesis: not installed (pip install schemathesis)"
fi
exit "$FAILS"
