#!/usr/bin/env bash
# Runs the README's five-minute tour and checks every answer.
#
# The README is the source: this script takes the first ```sh block after the
# heading "A five-minute tour" (after the PATH set-up block) and runs it command
# by command, exactly as written, against a server it starts on a free port
# with a temporary data directory. `courier` and `curl` are shell functions
# here: `courier` is the built binary (pointed at that server through
# COURIER_URL), `curl` is curl with `localhost:7070` swapped for the server's
# address and the HTTP status printed on stderr. The expectations below go step
# by step with the README's commands; a README edit that changes the commands
# without them fails here, naming the step.
#
#   COURIER_BIN=target/release/courier scripts/tour.sh     (default: target/debug/courier)
#
# Exits 0 when every step answered as expected, 1 naming the first that did
# not; the server is stopped on the way out either way.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COURIER_BIN=${COURIER_BIN:-$ROOT/target/debug/courier}
case $COURIER_BIN in /*) ;; *) COURIER_BIN=$ROOT/$COURIER_BIN ;; esac

die() { echo "tour: $*" >&2; exit 1; }
[ -x "$COURIER_BIN" ] || die "no courier binary at $COURIER_BIN (cargo build -p courier, or set COURIER_BIN)"
for tool in curl jq; do
    command -v "$tool" >/dev/null || die "the tour needs $tool"
done

# The tour block: the first ```sh block that follows the tour's PATH set-up.
extract_tour() {
    awk '
        /^## A five-minute tour/ { in_section = 1; next }
        in_section && /^## / { exit }
        in_section && /^```sh$/ { blocks++; if (blocks == 2) { in_block = 1; next } }
        in_block && /^```$/ { exit }
        in_block { print }
    ' README.md
}

# Splits the block into commands: comments and blank lines dropped, `\` lines joined.
# One command per NUL-terminated record.
split_commands() {
    local line command=""
    while IFS= read -r line; do
        if [ -z "$command" ]; then
            case $line in ''|'#'*) continue ;; esac
        fi
        if [[ $line == *\\ ]]; then
            command+="${line%\\}"
            continue
        fi
        command+="$line"
        printf '%s\0' "$command"
        command=""
    done
    [ -z "$command" ] || printf '%s\0' "$command"
}

# Each step: the start of the README's command | exit code | patterns (grep -E,
# separated by " && ") its output must contain | "retry" when the step only
# reads and may be repeated until the answer is there (dead-lettering is
# asynchronous).
STEPS=(
    'curl -X PUT localhost:7070/v1/topics/reactions|0|HTTP 201 && "name":"reactions"|'
    'curl -X PUT localhost:7070/v1/subscriptions/notifier|0|HTTP 201 && "ack_deadline":60000 && "max_attempts":2|'
    'curl -X POST localhost:7070/v1/topics/reactions/messages|0|HTTP 20[01] && "seq":1 && "duplicate":false|'
    'courier publish reactions|0|^seq=2 id=|'
    'curl -X POST localhost:7070/v1/subscriptions/notifier/pull|0|HTTP 200 && "seq":1 && "seq":2 && "attempt":1 && "token":"|'
    'FIRST=$(jq|0||'
    'curl -X POST localhost:7070/v1/subscriptions/notifier/ack|0|HTTP 200 && "outcome":"ok"|'
    'curl -X POST localhost:7070/v1/subscriptions/notifier/nack|0|HTTP 200 && "outcome":"ok"|'
    'courier pull notifier --wait 2s|0|^#2 token=[^ ]+ id=[^ ]+ attempt=2 key=post-42|'
    'courier nack notifier|0|^[^ ]+ ok$|'
    'courier dlq list notifier|0|courier-dlq-attempts=2 && courier-dlq-last-error=still down && courier-dlq-seq=2|retry'
    'courier dlq replay notifier|0|^replayed 1$|'
    'courier pull notifier --wait 1s --ack|0|attempt=1 && "reaction":"share"|'
    'courier stats|0|topics: +2 && acked total: +2 && dead-lettered: +1|'
)

WORK=$(mktemp -d)
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap stop_server EXIT

# Port 0: the server picks a free port and names it on its first stdout line.
mkfifo "$WORK/listening"
env -u COURIER_LISTEN -u COURIER_DATA_DIR -u COURIER_RATE_LIMIT -u COURIER_RATE_BURST \
    "$COURIER_BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" --log-format json \
    >"$WORK/listening" 2>"$WORK/server.log" &
SERVER_PID=$!
if ! read -r -t 30 first_line <"$WORK/listening"; then
    cat "$WORK/server.log" >&2
    die "the server did not start"
fi
ADDR=${first_line#courier listening on http://}
[ "$ADDR" != "$first_line" ] || die "unexpected first line from the server: $first_line"
export COURIER_URL="http://$ADDR"
echo "tour: server at $COURIER_URL (data in $WORK/data), binary $COURIER_BIN"

courier() { "$COURIER_BIN" "$@"; }
curl() {
    local args=() arg
    for arg in "$@"; do args+=("${arg//localhost:7070/$ADDR}"); done
    command curl -sS -w '%{stderr}\nHTTP %{http_code}\n' "${args[@]}"
}

mapfile -d '' COMMANDS < <(extract_tour | split_commands)
[ "${#COMMANDS[@]}" -gt 0 ] || die "no tour block found in README.md"
[ "${#COMMANDS[@]}" -eq "${#STEPS[@]}" ] ||
    die "README.md's tour has ${#COMMANDS[@]} commands, this script expects ${#STEPS[@]}: update STEPS with the README"

cd "$WORK"
for i in "${!COMMANDS[@]}"; do
    n=$((i + 1))
    command=${COMMANDS[$i]}
    IFS='|' read -r prefix want_rc patterns mode <<<"${STEPS[$i]}"
    [[ $command == "$prefix"* ]] ||
        die "step $n: README.md runs '$command', this script expects a command starting '$prefix'"
    echo "\$ $command"
    tries=1
    [ "$mode" = retry ] && tries=50
    while :; do
        eval "$command" >"$WORK/out" 2>&1
        rc=$?
        failed=""
        [ "$rc" = "$want_rc" ] || failed="exit code $rc, expected $want_rc"
        if [ -z "$failed" ] && [ -n "$patterns" ]; then
            rest=$patterns
            while [ -n "$rest" ]; do
                pattern=${rest%% && *}
                if [ "$pattern" = "$rest" ]; then rest=""; else rest=${rest#* && }; fi
                grep -Eq -- "$pattern" "$WORK/out" || { failed="no line matches /$pattern/"; break; }
            done
        fi
        tries=$((tries - 1))
        [ -n "$failed" ] && [ "$tries" -gt 0 ] || break
        sleep 0.1
    done
    awk '{ print "    " $0 }' "$WORK/out"
    if [ -n "$failed" ]; then
        echo "tour: step $n failed: $failed" >&2
        echo "tour: the command was: $command" >&2
        exit 1
    fi
done
echo "tour: all ${#COMMANDS[@]} steps answered as expected"
