#!/usr/bin/env bash
# Federation benchmarks (the join scenario: two Hearths and two Synapses federating on loopback)
# run from here for now; the single-server scenarios, media included, are in run.sh, which this
# will be folded back into.
# Benchmarks Hearth against Synapse on this machine: builds both release binaries, starts a fresh
# Hearth and a fresh Synapse (on PostgreSQL when its server binaries are here, else SQLite), runs
# `hearth-bench compare` for each scenario and stops everything on exit. Loopback only.
# The join scenario needs servers that federate: after the others (whose servers are stopped
# first), it gets two fresh Hearths and two fresh Synapses, each pair federating on loopback.
# Every scenario ends with a health check of each server it drove (for join, both of each pair):
# a fresh /sync must see a message sent after the load within 15 s. A server that fails it gets
# no figures; the run stops there, says so in the summary and exits non-zero.
#
#   bench/run.sh [--install] [--sqlite] [--keep] [--scenarios "..."] [--send-args "..."] ...
#
#   --install              apt-get install postgresql when its server binaries are missing
#   --sqlite               run Synapse on SQLite even when PostgreSQL is available
#   --keep                 keep the temporary directories (data, configs, logs) for inspection
#   --scenarios            which scenarios, in order (default: send messages initial-sync
#                          sync-latency sync-memory; sync-memory last, it leaves the most behind);
#                          join (not in the default) always runs last, on servers of its own
#   --send-args            extra options for send, e.g. "--senders 20 --messages 2000"
#   --messages-args        extra options for messages, e.g. "--duration 10"
#   --sync-latency-args    extra options for sync-latency, e.g. "--idle 500 --messages 100"
#   --sync-memory-args     extra options for sync-memory, e.g. "--polls 5000"
#   --initial-sync-args    extra options for initial-sync, e.g. "--rooms 200"
#   --join-args            extra options for join, e.g. "--members 100,1000,5000 --rooms 1"
#
# Environment: VENV (Synapse virtualenv, default $SYNAPSE_VENV, else ~/.cache/hearth-venv,
# the one .ci/run makes for the interop tests), CARGO_TARGET_DIR, RUST_LOG (Hearth's log filter,
# e.g. hearth=debug; its logs are kept with --keep).
set -euo pipefail

INSTALL=0
FORCE_SQLITE=0
KEEP=0
SCENARIOS="send messages initial-sync sync-latency sync-memory"
SEND_ARGS=""
MESSAGES_ARGS=""
SYNC_LATENCY_ARGS=""
SYNC_MEMORY_ARGS=""
INITIAL_SYNC_ARGS=""
JOIN_ARGS=""
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
        --join-args) JOIN_ARGS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

for scenario in $SCENARIOS; do
    case "$scenario" in
        send | messages | sync-latency | sync-memory | initial-sync | join) ;;
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
PG_STARTED=0
# Per server, by key (hearth, synapse, hearth_a, ...): what the start functions below set up.
declare -A PID=() URL=() SECRET=() NAME=()

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
    local key f
    for key in "${!PID[@]}"; do stop_pid "${PID[$key]}" "$key"; done
    if [[ $PG_STARTED == 1 ]]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [[ $rc != 0 ]]; then
        # The servers' own words are usually the quickest way to the cause.
        for f in "$WORK"/hearth*.log "$WORK"/synapse*/stdout.log "$WORK"/synapse*/homeserver.log \
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

# A port the kernel just handed out and released: free unless someone races us for it. Sets the
# variable named $1 rather than printing, so that the list of ports handed out here survives
# (a $(...) subshell would lose it).
USED_PORTS=" "
free_port() {
    # Names of its own that no caller's variable can have: a nameref to a caller's `port` would
    # otherwise resolve to a local `port` here.
    local -n _fp_out=$1
    local _fp_port
    while :; do
        _fp_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        [[ $USED_PORTS == *" $_fp_port "* ]] || break
    done
    USED_PORTS+="$_fp_port "
    _fp_out=$_fp_port
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
    free_port PG_PORT
    log "starting PostgreSQL ($PG_BIN) on a unix socket in $PGDIR"
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PGDIR/data" -U bench --auth=trust -E UTF8 --locale=C \
        >"$WORK/initdb.log" 2>&1 || die "initdb failed (see $WORK/initdb.log)"
    # -h '' disables TCP entirely; the socket directory is private to this run.
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -t 60 \
        -o "-h '' -k $PGDIR -p $PG_PORT" start >/dev/null || die "PostgreSQL did not start"
    PG_STARTED=1
    DB_DESC="PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') (unix socket, temp cluster)"
else
    DB_DESC="SQLite ($DB_NOTE)"
    log "NOTE: Synapse runs on SQLite, not PostgreSQL: $DB_NOTE"
fi

# --- servers ---------------------------------------------------------------------------------------
# A server that federates is named 127.0.0.1:<federation port>, so its peers reach it without
# discovery; certificates are self-signed and nobody checks them (loopback only).

# Starts a Hearth under `key` (log $WORK/<key>.log, data $WORK/<key>-data); federating if $2 is 1.
start_hearth() {
    local key=$1 federate=$2 port fed_port
    free_port port
    free_port fed_port
    SECRET[$key]=$(secret)
    URL[$key]="http://127.0.0.1:$port"
    local federation=(HEARTH_FEDERATION__ENABLED=false)
    if [[ $federate == 1 ]]; then
        NAME[$key]="127.0.0.1:$fed_port"
        federation=(HEARTH_FEDERATION__ENABLED=true HEARTH_FEDERATION__VERIFY_CERTIFICATES=false HEARTH_FEDERATION__IP_RANGE_ALLOW='["127.0.0.0/8"]')
    else
        NAME[$key]=bench.hearth
    fi
    log "starting Hearth $key (${NAME[$key]}) on ${URL[$key]}"
    # Only Hearth's environment gets HEARTH_* (it rejects unknown ones). Rate limits exist only on
    # login/registration; raised so account setup never waits.
    env HEARTH_SERVER_NAME="${NAME[$key]}" \
        HEARTH_LISTEN__CLIENT="127.0.0.1:$port" \
        HEARTH_LISTEN__FEDERATION="127.0.0.1:$fed_port" \
        HEARTH_DATABASE__PATH="$WORK/$key-data" \
        HEARTH_REGISTRATION__SHARED_SECRET="${SECRET[$key]}" \
        HEARTH_REGISTRATION__MODE=disabled \
        "${federation[@]}" \
        HEARTH_LOG__LEVEL=warn \
        HEARTH_RATE_LIMITS__REGISTRATION__PER_SECOND=100000 \
        HEARTH_RATE_LIMITS__REGISTRATION__BURST=100000 \
        HEARTH_RATE_LIMITS__LOGIN__PER_SECOND=100000 \
        HEARTH_RATE_LIMITS__LOGIN__BURST=100000 \
        "$BIN/hearth" >"$WORK/$key.log" 2>&1 &
    PID[$key]=$!
}

# Starts a Synapse under `key` (folder $WORK/<key>, PostgreSQL database <key> when we have
# PostgreSQL); federating if $2 is 1.
start_synapse() {
    local key=$1 federate=$2 port fed_port
    local dir="$WORK/$key"
    free_port port
    free_port fed_port
    SECRET[$key]=$(secret)
    URL[$key]="http://127.0.0.1:$port"
    if [[ $federate == 1 ]]; then NAME[$key]="127.0.0.1:$fed_port"; else NAME[$key]=bench.synapse; fi
    mkdir -p "$dir"
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver --server-name "${NAME[$key]}" \
        --config-path "$dir/homeserver.yaml" --data-directory "$dir" \
        --generate-config --report-stats=no >"$dir/generate.log" 2>&1) \
        || die "synapse --generate-config failed (see $dir/generate.log)"
    # Keep the generated log config (it sets up Synapse's request context) but only at WARNING.
    sed -i 's/level: INFO/level: WARNING/' "$dir/${NAME[$key]}.log.config"

    local database_yaml
    if [[ $DB_KIND == postgres ]]; then
        psql -h "$PGDIR" -p "$PG_PORT" -U bench -d postgres -v ON_ERROR_STOP=1 -q -c \
            "CREATE DATABASE $key ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0" \
            || die "CREATE DATABASE $key failed"
        database_yaml="database:
  name: psycopg2
  args:
    user: bench
    dbname: $key
    host: $PGDIR
    port: $PG_PORT
    cp_min: 5
    cp_max: 10"
    else
        database_yaml="database:
  name: sqlite3
  args:
    database: $dir/homeserver.db"
    fi

    local federation_yaml
    if [[ $federate == 1 ]]; then
        # Synapse speaks federation over TLS only.
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
            -keyout "$dir/tls.key" -out "$dir/tls.crt" >"$dir/openssl.log" 2>&1 \
            || die "openssl could not make a certificate (see $dir/openssl.log)"
        federation_yaml="  - port: $fed_port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    x_forwarded: false
    resources:
      - names: [federation]
        compress: false
tls_certificate_path: $dir/tls.crt
tls_private_key_path: $dir/tls.key
# Peers on loopback: self-signed certificates, no notary, and addresses the default blacklist
# forbids.
federation_verify_certificates: false
trusted_key_servers: []
suppress_key_server_warning: true
ip_range_blacklist: []
# Federation requests from the peer are never delayed or refused.
rc_federation:
  window_size: 1000
  sleep_limit: 1000000
  sleep_delay: 1
  reject_limit: 1000000
  concurrent: 1000
# Registrations are setup here (thousands of them), not what is measured; the default 12 rounds
# would make them the slowest part of the run.
bcrypt_rounds: 4"
    else
        federation_yaml="# No federation: no key servers, no outbound destinations.
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []"
    fi

    # A second config file: Synapse merges top-level keys, later files winning, so the generated
    # file stays as Synapse wrote it. Every rate limit is raised far beyond what the scenarios
    # can reach.
    local rl='{per_second: 1000000, burst_count: 1000000}'
    cat >"$dir/bench.yaml" <<EOF
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
$federation_yaml
$database_yaml
registration_shared_secret: "${SECRET[$key]}"
enable_registration: false
report_stats: false
rc_message: $rl
rc_registration: $rl
rc_registration_token_validity: $rl
rc_login:
  address: $rl
  account: $rl
  failed_attempts: $rl
rc_joins:
  local: $rl
  remote: $rl
rc_joins_per_room: $rl
rc_invites:
  per_room: $rl
  per_user: $rl
  per_issuer: $rl
rc_third_party_invite: $rl
rc_room_creation: $rl
rc_admin_redaction: $rl
rc_3pid_validation: $rl
rc_key_requests: $rl
rc_media_create: $rl
rc_presence:
  per_user: $rl
rc_delayed_event_mgmt: $rl
rc_reports: $rl
rc_profile: $rl
rc_user_directory: $rl
EOF

    log "starting Synapse $key (${NAME[$key]}, $SYNAPSE_VERSION) on ${URL[$key]} ($DB_DESC)"
    (cd "$dir" && exec "$VENV/bin/python" -m synapse.app.homeserver \
        -c "$dir/homeserver.yaml" -c "$dir/bench.yaml" >"$dir/stdout.log" 2>&1) &
    PID[$key]=$!
}

stop_servers() {
    local key
    for key in "$@"; do
        stop_pid "${PID[$key]}" "$key"
        unset "PID[$key]"
    done
}

rss_of() { awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo '?'; }

# --- CPU accounting --------------------------------------------------------------------------------
# CPU seconds a process has used (user + system, plus its reaped children's), from /proc: the
# figures are per wall-clock second, this says what each server spent to reach them.
CLK_TCK=$(getconf CLK_TCK)
cpu_of() {
    local pid=$1
    [[ -r /proc/$pid/stat ]] || { echo 0; return; }
    # Fields after the ")" that ends the command name: utime is the 12th, cstime the 15th.
    awk -v tck="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / tck }' \
        "/proc/$pid/stat"
}
# The sum over the servers with these keys.
cpu_of_keys() {
    local total=0 key
    for key in "$@"; do
        total=$(awk -v a="$total" -v b="$(cpu_of "${PID[$key]}")" 'BEGIN { printf "%.2f", a + b }')
    done
    echo "$total"
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
# "hearth synapse postgres" CPU seconds, for the Hearth keys in $HEARTHS and Synapse keys in
# $SYNAPSES.
cpu_snapshot() {
    # shellcheck disable=SC2086 # lists of keys
    echo "$(cpu_of_keys $HEARTHS) $(cpu_of_keys $SYNAPSES) $(cpu_postgres)"
}

RC=0
SUMMARY=()
HEALTH_FAILED=""
HEARTHS=""
SYNAPSES=""
# Runs one scenario with `hearth-bench compare`; $3... are the servers' options.
run_scenario() {
    local scenario=$1 extra=$2 before after key
    shift 2
    log "scenario $scenario ${extra:+($extra)}"
    before=$(cpu_snapshot)
    # shellcheck disable=SC2086 # extra options are meant to split into words
    if ! "$BIN/hearth-bench" compare "$@" "$scenario" $extra | tee "$WORK/$scenario.out"; then
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
    # Setup included; both servers idle while the other one is measured.
    SUMMARY+=("$(awk -v s="$scenario" -v b="$before" -v a="$after" 'BEGIN {
        split(b, x, " "); split(a, y, " ");
        printf "CPU seconds used during %s (setup included): hearth %.1f, synapse %.1f, postgres %.1f",
            s, y[1] - x[1], y[2] - x[2], y[3] - x[3] }')")
    for key in $HEARTHS $SYNAPSES; do
        kill -0 "${PID[$key]}" 2>/dev/null || { log "$key is no longer running"; RC=1; }
    done
}

SYNAPSE_VERSION="Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')"
log "machine: $(nproc) cores; hearth $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree)"
log "Synapse database: $DB_DESC"
STARTED_AT=$SECONDS
SINGLE=""
WANT_JOIN=0
for scenario in $SCENARIOS; do
    if [[ $scenario == join ]]; then WANT_JOIN=1; else SINGLE+="$scenario "; fi
done

# --- one Hearth, one Synapse -----------------------------------------------------------------------
if [[ -n "$SINGLE" ]]; then
    HEARTHS=hearth
    SYNAPSES=synapse
    start_hearth hearth 0
    start_synapse synapse 0
    wait_for Hearth "${URL[hearth]}" "${PID[hearth]}" 30
    # The first start of Synapse creates its schema, which takes a while on PostgreSQL.
    wait_for Synapse "${URL[synapse]}" "${PID[synapse]}" 180
    HP=${PID[hearth]} SP=${PID[synapse]}
    FRESH_RSS="fresh after startup: hearth (pid $HP, $(cat "/proc/$HP/comm")) RSS $(rss_of "$HP"), synapse (pid $SP, $(cat "/proc/$SP/comm")) RSS $(rss_of "$SP")"
    log "$FRESH_RSS"
    # The PIDs let the sync scenarios read the servers' memory and descriptors from /proc.
    PAIR=(--hearth "${URL[hearth]}" --hearth-secret "${SECRET[hearth]}" --hearth-pid "$HP"
        --synapse "${URL[synapse]}" --synapse-secret "${SECRET[synapse]}" --synapse-pid "$SP")
    for scenario in $SINGLE; do
        case "$scenario" in
            send) run_scenario send "$SEND_ARGS" "${PAIR[@]}" ;;
            messages) run_scenario messages "$MESSAGES_ARGS" "${PAIR[@]}" ;;
            sync-latency) run_scenario sync-latency "$SYNC_LATENCY_ARGS" "${PAIR[@]}" ;;
            sync-memory) run_scenario sync-memory "$SYNC_MEMORY_ARGS" "${PAIR[@]}" ;;
            initial-sync) run_scenario initial-sync "$INITIAL_SYNC_ARGS" "${PAIR[@]}" ;;
        esac
        # A server that stopped delivering would make every later figure meaningless.
        [[ -n "$HEALTH_FAILED" ]] && { log "stopping: the health check failed"; break; }
    done
    SUMMARY+=("$FRESH_RSS; at the end: hearth $(rss_of "$HP"), synapse $(rss_of "$SP")")
    [[ " $SINGLE " == *" sync-memory "* ]] \
        && SUMMARY+=("sync-memory counts each server process only: Synapse's PostgreSQL is not in its RSS")
    # The join scenario's servers should have the machine to themselves.
    [[ $WANT_JOIN == 1 ]] && stop_servers hearth synapse
fi

# --- two Hearths, two Synapses, each pair federating -----------------------------------------------
if [[ $WANT_JOIN == 1 && -z "$HEALTH_FAILED" ]]; then
    HEARTHS="hearth_a hearth_b"
    SYNAPSES="synapse_a synapse_b"
    for key in $HEARTHS; do start_hearth "$key" 1; done
    for key in $SYNAPSES; do start_synapse "$key" 1; done
    for key in $HEARTHS; do wait_for "$key" "${URL[$key]}" "${PID[$key]}" 30; done
    for key in $SYNAPSES; do wait_for "$key" "${URL[$key]}" "${PID[$key]}" 180; done
    # A is where the rooms live, B where the joining users come from.
    run_scenario join "$JOIN_ARGS" \
        --hearth "${URL[hearth_a]}" --hearth-secret "${SECRET[hearth_a]}" \
        --hearth-pid "${PID[hearth_a]}" \
        --hearth-peer "${URL[hearth_b]}" --hearth-peer-secret "${SECRET[hearth_b]}" \
        --hearth-peer-pid "${PID[hearth_b]}" \
        --synapse "${URL[synapse_a]}" --synapse-secret "${SECRET[synapse_a]}" \
        --synapse-pid "${PID[synapse_a]}" \
        --synapse-peer "${URL[synapse_b]}" --synapse-peer-secret "${SECRET[synapse_b]}" \
        --synapse-peer-pid "${PID[synapse_b]}"
    SUMMARY+=("join servers at the end: $(for key in $HEARTHS $SYNAPSES; do printf '%s %s, ' "$key" "$(rss_of "${PID[$key]}")"; done)")
fi

log "summary (Synapse on $DB_DESC; scenarios took $((SECONDS - STARTED_AT)) s)"
for line in "${SUMMARY[@]}"; do log "$line"; done
for scenario in $SCENARIOS; do
    [[ -f "$WORK/$scenario.out" ]] || continue
    grep -h '^{"' "$WORK/$scenario.out" | grep '"type":"ratio"\|"type":"error"' >&2 || true
done
[[ -n "$HEALTH_FAILED" ]] && log "HEALTH CHECK FAILED after:$HEALTH_FAILED (see the \"health:\" lines above; no figures for that server, later scenarios not run)"
for key in hearth hearth_a hearth_b; do
    [[ -s "$WORK/$key.log" ]] || continue
    log "Hearth $key logged $(wc -l <"$WORK/$key.log") lines at warn or above; the last ones:"
    tail -n 10 "$WORK/$key.log" >&2
done
exit "$RC"
