#!/usr/bin/env bash
# Benchmarks Hearth against Synapse on this machine: builds both release binaries, starts a fresh
# Hearth and a fresh Synapse (on PostgreSQL when its server binaries are here, else SQLite), runs
# `hearth-bench compare` for each scenario and stops everything on exit. Loopback only.
# Every scenario ends with a health check of each server: a fresh /sync must see a message sent
# after the load within 15 s. A server that fails it (e.g. its /sync stream froze) gets no
# figures; the run stops there, says so in the summary and exits non-zero.
#
#   bench/run.sh [--install] [--sqlite] [--keep] [--scenarios "..."] [--send-args "..."] ...
#
#   --install              apt-get install postgresql when its server binaries are missing
#   --sqlite               run Synapse on SQLite even when PostgreSQL is available
#   --keep                 keep the temporary directories (data, configs, logs) for inspection
#   --scenarios            which scenarios, in order (default: send messages initial-sync
#                          sync-latency media appservice push sliding-sync search sync-memory;
#                          sync-memory last, it leaves the most behind)
#   --send-args            extra options for send, e.g. "--senders 20 --messages 2000"
#   --messages-args        extra options for messages, e.g. "--duration 10"
#   --sync-latency-args    extra options for sync-latency, e.g. "--idle 500 --messages 100"
#   --sync-memory-args     extra options for sync-memory, e.g. "--polls 5000"
#   --initial-sync-args    extra options for initial-sync, e.g. "--rooms 200"
#   --media-args           extra options for media, e.g. "--files 10 --images 30"
#   --appservice-args      extra options for appservice, e.g. "--senders 10 --messages 1000"
#   --push-args            extra options for push, e.g. "--members 20 --messages 500"
#   --sliding-sync-args    extra options for sliding-sync, e.g. "--rooms 200 --idle 500"
#   --search-args          extra options for search, e.g. "--messages-per-room 1000" (100,000
#                          messages) or "--users 0"; after it, each server's index size on disk
#
# Environment: VENV (Synapse virtualenv, default $SYNAPSE_VENV, else ~/.cache/hearth-venv,
# the one .ci/run makes for the interop tests), CARGO_TARGET_DIR.
set -euo pipefail

INSTALL=0
FORCE_SQLITE=0
KEEP=0
SCENARIOS="send messages initial-sync sync-latency media appservice push sliding-sync search sync-memory"
SEND_ARGS=""
MESSAGES_ARGS=""
SYNC_LATENCY_ARGS=""
SYNC_MEMORY_ARGS=""
INITIAL_SYNC_ARGS=""
MEDIA_ARGS=""
APPSERVICE_ARGS=""
PUSH_ARGS=""
SLIDING_SYNC_ARGS=""
SEARCH_ARGS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --install) INSTALL=1 ;;
        --sqlite) FORCE_SQLITE=1 ;;
        --keep) KEEP=1 ;;
        --send-args) SEND_ARGS="$2"; shift ;;
        --messages-args) MESSAGES_ARGS="$2"; shift ;;
        --sync-latency-args) SYNC_LATENCY_ARGS="$2"; shift ;;
        --sync-memory-args) SYNC_MEMORY_ARGS="$2"; shift ;;
        --initial-sync-args) INITIAL_SYNC_ARGS="$2"; shift ;;
        --media-args) MEDIA_ARGS="$2"; shift ;;
        --appservice-args) APPSERVICE_ARGS="$2"; shift ;;
        --push-args) PUSH_ARGS="$2"; shift ;;
        --sliding-sync-args) SLIDING_SYNC_ARGS="$2"; shift ;;
        --search-args) SEARCH_ARGS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

for scenario in $SCENARIOS; do
    case "$scenario" in
        send | messages | sync-latency | sync-memory | initial-sync | media | appservice | push \
            | sliding-sync | search) ;;
        *) echo "run.sh: unknown scenario $scenario (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-${SYNAPSE_VENV:-$HOME/.cache/hearth-venv}}
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# --- cleanup: everything started below registers itself here -------------------------------------
WORK=$(mktemp -d -t hearth-bench.XXXXXX)
PGDIR=""
PG_BIN=""
PG_AS=()
HEARTH_PID=""
SYNAPSE_PID=""
PG_STARTED=0

stop_pid() {
    local pid=$1 name=$2
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    log "$name ($pid) ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$HEARTH_PID" hearth
    stop_pid "$SYNAPSE_PID" synapse
    if [[ $PG_STARTED == 1 ]]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [[ $rc != 0 ]]; then
        # The servers' own words are usually the quickest way to the cause.
        for f in "$WORK/hearth.log" "$WORK/synapse/stdout.log" "$WORK/synapse/homeserver.log" \
                 "${PGDIR:+$PGDIR/postgres.log}"; do
            [[ -n "$f" && -s "$f" ]] || continue
            log "last lines of $f"
            tail -n 30 "$f" >&2 || true
        done
    fi
    if [[ $KEEP == 1 ]]; then
        log "kept $WORK${PGDIR:+ and $PGDIR}"
    else
        rm -rf "$WORK"
        [[ -n "$PGDIR" ]] && rm -rf "$PGDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port the kernel just handed out and released: free unless someone races us for it.
USED_PORTS=" "
free_port() {
    local port
    while :; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        [[ $USED_PORTS == *" $port "* ]] || break
    done
    USED_PORTS+="$port "
    echo "$port"
}

secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

# Polls /versions until it answers, or fails early if the process has died.
wait_for() {
    local name=$1 url=$2 pid=$3 seconds=$4
    for _ in $(seq $((seconds * 5))); do
        if curl -fsS --noproxy '*' -o /dev/null "$url/_matrix/client/versions" 2>/dev/null; then
            log "$name answers at $url"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
        sleep 0.2
    done
    die "$name did not answer $url/_matrix/client/versions within ${seconds}s"
}

# --- open files ------------------------------------------------------------------------------------
# sync-memory holds 10,000 long-polls: one descriptor each in hearth-bench and in the server, which
# inherit this limit (Synapse raises its soft limit to the hard one itself). Root may raise the
# hard limit; anyone may raise the soft one up to it.
WANT_FDS=65536
if (( $(ulimit -n) < WANT_FDS )); then
    ulimit -n "$WANT_FDS" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
log "open files limit: $(ulimit -n)"

# --- build -----------------------------------------------------------------------------------------
log "building release binaries (may wait for cargo's lock on the shared target dir)"
(cd "$ROOT" && cargo build --release -p hearth && cargo build --release -p hearth-bench)
[[ -x "$BIN/hearth" && -x "$BIN/hearth-bench" ]] || die "binaries not found in $BIN"

# --- Synapse virtualenv ----------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/synapse_homeserver" ]]; then
    log "creating $VENV with matrix-synapse"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet matrix-synapse
fi

# --- PostgreSQL for Synapse, if we can have it -----------------------------------------------------
find_pg_bin() {
    local d
    if command -v pg_ctl >/dev/null 2>&1; then
        d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        [[ -x "$d/initdb" && -x "$d/postgres" ]] && { echo "$d"; return; }
    fi
    # Debian keeps the server binaries off PATH.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x "$d/pg_ctl" && -x "$d/initdb" ]] && { echo "$d"; return; }
    done
}

DB_KIND=sqlite
DB_NOTE=""
if [[ $FORCE_SQLITE == 1 ]]; then
    DB_NOTE="--sqlite given"
else
    PG_BIN=$(find_pg_bin)
    if [[ -z "$PG_BIN" && $INSTALL == 1 ]]; then
        log "installing postgresql with apt-get"
        apt-get install -y postgresql >"$WORK/apt.log" 2>&1 || die "apt-get install postgresql failed (see $WORK/apt.log)"
        PG_BIN=$(find_pg_bin)
    fi
    if [[ -z "$PG_BIN" ]]; then
        DB_NOTE="no PostgreSQL server binaries (pass --install to apt-get them)"
    elif ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null \
        && ! "$VENV/bin/pip" install --quiet psycopg2-binary >"$WORK/pip.log" 2>&1; then
        DB_NOTE="psycopg2 missing and pip install psycopg2-binary failed (see $WORK/pip.log)"
    else
        DB_KIND=postgres
    fi
fi

if [[ $DB_KIND == postgres ]]; then
    # The cluster lives outside $WORK: when we are root it must belong to an unprivileged user
    # (initdb and postgres refuse to run as root), who could not enter root's private temp dir.
    PGDIR=$(mktemp -d -t hearth-bench-pg.XXXXXX)
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user to run PostgreSQL"
        chown postgres: "$PGDIR"
        PG_AS=(runuser -u postgres --)
    fi
    PG_PORT=$(free_port)
    log "starting PostgreSQL ($PG_BIN) on a unix socket in $PGDIR"
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PGDIR/data" -U bench --auth=trust -E UTF8 --locale=C \
        >"$WORK/initdb.log" 2>&1 || die "initdb failed (see $WORK/initdb.log)"
    # -h '' disables TCP entirely; the socket directory is private to this run.
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -t 60 \
        -o "-h '' -k $PGDIR -p $PG_PORT" start >/dev/null || die "PostgreSQL did not start"
    PG_STARTED=1
    psql -h "$PGDIR" -p "$PG_PORT" -U bench -d postgres -v ON_ERROR_STOP=1 -q -c \
        "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0" \
        || die "CREATE DATABASE failed"
    DB_DESC="PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') (unix socket, temp cluster)"
else
    DB_DESC="SQLite ($DB_NOTE)"
    log "NOTE: Synapse runs on SQLite, not PostgreSQL: $DB_NOTE"
fi

# --- the appservice both servers are given (hearth-bench plays it in the appservice scenario) ------
AS_PORT=$(free_port)
AS_TOKEN=$(secret)
HS_TOKEN=$(secret)
AS_FILE="$WORK/appservice.yaml"
cat >"$AS_FILE" <<EOF
id: hearth-bench
url: "http://127.0.0.1:$AS_PORT"
as_token: "$AS_TOKEN"
hs_token: "$HS_TOKEN"
sender_localpart: "_hbasbot"
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_hbas_.*"
  aliases: []
  rooms: []
EOF

# --- the push gateway both servers' pushers point at (hearth-bench plays it in the push scenario) --
# Both servers refuse loopback gateways by default; each is told below to allow 127.0.0.1.
PUSH_PORT=$(free_port)

# --- Hearth ----------------------------------------------------------------------------------------
HEARTH_PORT=$(free_port)
HEARTH_FED_PORT=$(free_port)
HEARTH_SECRET=$(secret)
HEARTH_URL="http://127.0.0.1:$HEARTH_PORT"
log "starting Hearth on $HEARTH_URL"
# Only Hearth's environment gets HEARTH_* (it rejects unknown ones). Rate limits exist only on
# login/registration; raised so account setup never waits. The search scenario's directory
# accounts share no room with the searcher: both servers list every local user.
env HEARTH_SERVER_NAME=bench.hearth \
    HEARTH_LISTEN__CLIENT="127.0.0.1:$HEARTH_PORT" \
    HEARTH_LISTEN__FEDERATION="127.0.0.1:$HEARTH_FED_PORT" \
    HEARTH_DATABASE__PATH="$WORK/hearth-data" \
    HEARTH_REGISTRATION__SHARED_SECRET="$HEARTH_SECRET" \
    HEARTH_REGISTRATION__MODE=disabled \
    HEARTH_FEDERATION__ENABLED=false \
    HEARTH_LOG__LEVEL=warn \
    HEARTH_APPSERVICE__REGISTRATION_FILES="[\"$AS_FILE\"]" \
    HEARTH_PUSH__IP_RANGE_ALLOW='["127.0.0.1/32"]' \
    HEARTH_USER_DIRECTORY__SEARCH_ALL_USERS=true \
    HEARTH_RATE_LIMITS__REGISTRATION__PER_SECOND=100000 \
    HEARTH_RATE_LIMITS__REGISTRATION__BURST=100000 \
    HEARTH_RATE_LIMITS__LOGIN__PER_SECOND=100000 \
    HEARTH_RATE_LIMITS__LOGIN__BURST=100000 \
    "$BIN/hearth" >"$WORK/hearth.log" 2>&1 &
HEARTH_PID=$!

# --- Synapse ---------------------------------------------------------------------------------------
SYNAPSE_PORT=$(free_port)
SYNAPSE_SECRET=$(secret)
SYNAPSE_URL="http://127.0.0.1:$SYNAPSE_PORT"
SDIR="$WORK/synapse"
mkdir -p "$SDIR"
(cd "$SDIR" && "$VENV/bin/python" -m synapse.app.homeserver --server-name bench.synapse \
    --config-path "$SDIR/homeserver.yaml" --data-directory "$SDIR" \
    --generate-config --report-stats=no >"$SDIR/generate.log" 2>&1) \
    || die "synapse --generate-config failed (see $SDIR/generate.log)"
# Keep the generated log config (it sets up Synapse's request context) but only at WARNING.
sed -i 's/level: INFO/level: WARNING/' "$SDIR/bench.synapse.log.config"

if [[ $DB_KIND == postgres ]]; then
    DATABASE_YAML="database:
  name: psycopg2
  args:
    user: bench
    dbname: synapse
    host: $PGDIR
    port: $PG_PORT
    cp_min: 5
    cp_max: 10"
else
    DATABASE_YAML="database:
  name: sqlite3
  args:
    database: $SDIR/homeserver.db"
fi

# A second config file: Synapse merges top-level keys, later files winning, so the generated file
# stays as Synapse wrote it. Every rate limit is raised far beyond what the scenarios can reach.
RL='{per_second: 1000000, burst_count: 1000000}'
cat >"$SDIR/bench.yaml" <<EOF
listeners:
  - port: $SYNAPSE_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
$DATABASE_YAML
registration_shared_secret: "$SYNAPSE_SECRET"
app_service_config_files: ["$AS_FILE"]
# The push scenario's gateway is this tool on 127.0.0.1, which the default ip_range_blacklist
# (used by the pushers' HTTP client) contains; the whitelist wins over it.
ip_range_whitelist: ["127.0.0.1"]
# The search scenario's directory accounts share no room with the searcher (as for Hearth).
user_directory:
  search_all_users: true
enable_registration: false
report_stats: false
# No federation: no key servers, no outbound destinations.
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
rc_message: $RL
rc_registration: $RL
rc_registration_token_validity: $RL
rc_login:
  address: $RL
  account: $RL
  failed_attempts: $RL
rc_joins:
  local: $RL
  remote: $RL
rc_joins_per_room: $RL
rc_invites:
  per_room: $RL
  per_user: $RL
  per_issuer: $RL
rc_third_party_invite: $RL
rc_room_creation: $RL
rc_admin_redaction: $RL
rc_3pid_validation: $RL
rc_key_requests: $RL
rc_media_create: $RL
rc_presence:
  per_user: $RL
rc_delayed_event_mgmt: $RL
rc_reports: $RL
rc_profile: $RL
rc_user_directory: $RL
# Thumbnails made when asked for, as Hearth makes them, not at upload time in fixed sizes: the
# media scenario times their generation.
dynamic_thumbnails: true
thumbnail_sizes: []
EOF

log "starting Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)') on $SYNAPSE_URL ($DB_DESC)"
(cd "$SDIR" && exec "$VENV/bin/python" -m synapse.app.homeserver \
    -c "$SDIR/homeserver.yaml" -c "$SDIR/bench.yaml" >"$SDIR/stdout.log" 2>&1) &
SYNAPSE_PID=$!

wait_for Hearth "$HEARTH_URL" "$HEARTH_PID" 30
# The first start of Synapse creates its schema, which takes a while on PostgreSQL.
wait_for Synapse "$SYNAPSE_URL" "$SYNAPSE_PID" 180
rss_of() { awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo '?'; }
FRESH_RSS="fresh after startup: hearth (pid $HEARTH_PID, $(cat "/proc/$HEARTH_PID/comm")) RSS $(rss_of "$HEARTH_PID"), synapse (pid $SYNAPSE_PID, $(cat "/proc/$SYNAPSE_PID/comm")) RSS $(rss_of "$SYNAPSE_PID")"
log "$FRESH_RSS"

# --- scenarios -------------------------------------------------------------------------------------
log "machine: $(nproc) cores; hearth $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree)"
log "Synapse database: $DB_DESC"
# CPU seconds a process has used (user + system, plus its reaped children's), from /proc: the
# figures above are per wall-clock second, this says what each server spent to reach them.
CLK_TCK=$(getconf CLK_TCK)
cpu_of() {
    local pid=$1
    [[ -r /proc/$pid/stat ]] || { echo 0; return; }
    # Fields after the ")" that ends the command name: utime is the 12th, cstime the 15th.
    awk -v tck="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / tck }' \
        "/proc/$pid/stat"
}
cpu_postgres() {
    [[ $PG_STARTED == 1 && -r "$PGDIR/data/postmaster.pid" ]] || { echo 0; return; }
    local master total child
    master=$(head -n 1 "$PGDIR/data/postmaster.pid")
    total=$(cpu_of "$master")
    for child in $(ps -o pid= --ppid "$master"); do
        total=$(awk -v a="$total" -v b="$(cpu_of "$child")" 'BEGIN { printf "%.2f", a + b }')
    done
    echo "$total"
}
cpu_snapshot() { echo "$(cpu_of "$HEARTH_PID") $(cpu_of "$SYNAPSE_PID") $(cpu_postgres)"; }

# The full-text index on disk, after the search scenario: Hearth's tantivy directory, Synapse's
# event_search table. Both hold every message sent so far in this run, not only the search
# scenario's. Printed to stdout beside the scenario's figures and kept for the summary.
mib() { awk -v b="$1" 'BEGIN { if (b ~ /^[0-9]+$/) printf "%.1f MiB (%d bytes)", b / 1048576, b; else print "?" }'; }
SEARCH_SIZES=()
search_index_sizes() {
    local hearth hearth_all synapse synapse_all synapse_what
    hearth=$(du -sb "$WORK/hearth-data/search" 2>/dev/null | cut -f1) || hearth=""
    hearth_all=$(du -sb "$WORK/hearth-data" 2>/dev/null | cut -f1) || hearth_all=""
    if [[ $DB_KIND == postgres ]]; then
        local q=(psql -h "$PGDIR" -p "$PG_PORT" -U bench -d synapse -tAq -c)
        synapse=$("${q[@]}" "SELECT pg_total_relation_size('event_search')" 2>/dev/null) || synapse=""
        synapse_all=$("${q[@]}" "SELECT pg_database_size('synapse')" 2>/dev/null) || synapse_all=""
        synapse_what="table event_search with its indexes and TOAST (pg_total_relation_size)"
    else
        # event_search is an FTS4 table: its shadow tables, where SQLite can count pages per table.
        synapse=$("$VENV/bin/python" -c 'import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute(
    "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE '"'event_search%'"'").fetchone()[0])' \
            "$SDIR/homeserver.db" 2>/dev/null) || synapse=""
        synapse_all=$(stat -c %s "$SDIR/homeserver.db" 2>/dev/null) || synapse_all=""
        synapse_what="SQLite tables event_search* (dbstat)"
    fi
    SEARCH_SIZES=(
        "search index on disk: hearth $(mib "$hearth") in hearth-data/search (whole data directory $(mib "$hearth_all"))"
        "search index on disk: synapse $(mib "$synapse") in $synapse_what (whole database $(mib "$synapse_all"))"
    )
    if [[ $hearth =~ ^[0-9]+$ && $synapse =~ ^[0-9]+$ && $synapse != 0 ]]; then
        SEARCH_SIZES+=("search index on disk: ratio hearth/synapse $(awk -v a="$hearth" -v b="$synapse" 'BEGIN { printf "%.2f", a / b }')x (every message of the run so far, not only the search scenario's)")
    fi
    local line
    for line in "${SEARCH_SIZES[@]}"; do echo "[search] $line"; done | tee -a "$WORK/search.out"
}

RC=0
CPU_REPORT=()
HEALTH_FAILED=""
run_scenario() {
    local scenario=$1 extra=$2 before after
    log "scenario $scenario ${extra:+($extra)}"
    before=$(cpu_snapshot)
    # The PIDs let the sync scenarios read the servers' memory and descriptors from /proc.
    # shellcheck disable=SC2086 # extra options are meant to split into words
    if ! "$BIN/hearth-bench" compare \
        --hearth "$HEARTH_URL" --hearth-secret "$HEARTH_SECRET" --hearth-pid "$HEARTH_PID" \
        --synapse "$SYNAPSE_URL" --synapse-secret "$SYNAPSE_SECRET" --synapse-pid "$SYNAPSE_PID" \
        "$scenario" $extra | tee "$WORK/$scenario.out"; then
        log "scenario $scenario reported failures"
        RC=1
    fi
    # One grep, not two in a pipe: with pipefail, grep -q's early exit could fail the first.
    if grep -q '"type":"health".*"ok":false\|"ok":false.*"type":"health"' "$WORK/$scenario.out"; then
        log "scenario $scenario: HEALTH CHECK FAILED (a fresh /sync did not see a new message)"
        HEALTH_FAILED+=" $scenario"
        RC=1
    fi
    after=$(cpu_snapshot)
    # Setup (registration, fill) included; both servers idle while the other one is measured.
    CPU_REPORT+=("$(awk -v s="$scenario" -v b="$before" -v a="$after" 'BEGIN {
        split(b, x, " "); split(a, y, " ");
        printf "CPU seconds used during %s (setup included): hearth %.1f, synapse %.1f, postgres %.1f",
            s, y[1] - x[1], y[2] - x[2], y[3] - x[3] }')")
    kill -0 "$HEARTH_PID" 2>/dev/null || { log "Hearth is no longer running"; RC=1; }
    kill -0 "$SYNAPSE_PID" 2>/dev/null || { log "Synapse is no longer running"; RC=1; }
}
STARTED_AT=$SECONDS
for scenario in $SCENARIOS; do
    case "$scenario" in
        send) run_scenario send "$SEND_ARGS" ;;
        messages) run_scenario messages "$MESSAGES_ARGS" ;;
        sync-latency) run_scenario sync-latency "$SYNC_LATENCY_ARGS" ;;
        sync-memory) run_scenario sync-memory "$SYNC_MEMORY_ARGS" ;;
        initial-sync) run_scenario initial-sync "$INITIAL_SYNC_ARGS" ;;
        media) run_scenario media "$MEDIA_ARGS" ;;
        appservice) run_scenario appservice \
            "--port $AS_PORT --as-token $AS_TOKEN --hs-token $HS_TOKEN $APPSERVICE_ARGS" ;;
        push) run_scenario push "--port $PUSH_PORT $PUSH_ARGS" ;;
        sliding-sync) run_scenario sliding-sync "$SLIDING_SYNC_ARGS" ;;
        search) run_scenario search "$SEARCH_ARGS"; search_index_sizes ;;
    esac
    # A server that stopped delivering would make every later figure meaningless.
    [[ -n "$HEALTH_FAILED" ]] && { log "stopping: the health check failed"; break; }
done

log "summary (Synapse on $DB_DESC; scenarios took $((SECONDS - STARTED_AT)) s)"
for line in "${CPU_REPORT[@]}"; do log "$line"; done
for line in "${SEARCH_SIZES[@]}"; do log "$line"; done
log "$FRESH_RSS; at the end: hearth $(rss_of "$HEARTH_PID"), synapse $(rss_of "$SYNAPSE_PID")"
[[ " $SCENARIOS " == *" sync-memory "* ]] \
    && log "sync-memory counts each server process only: Synapse's PostgreSQL is not in its RSS"
for scenario in $SCENARIOS; do
    [[ -f "$WORK/$scenario.out" ]] || continue
    grep -h '^{"' "$WORK/$scenario.out" | grep '"type":"ratio"\|"type":"error"' >&2 || true
done
[[ -n "$HEALTH_FAILED" ]] && log "HEALTH CHECK FAILED after:$HEALTH_FAILED (see the \"health:\" lines above; no figures for that server, later scenarios not run)"
if [[ -s "$WORK/hearth.log" ]]; then
    log "Hearth logged $(wc -l <"$WORK/hearth.log") lines at warn or above; the last ones:"
    tail -n 10 "$WORK/hearth.log" >&2
fi
exit "$RC"
