#!/usr/bin/env bash
# Local services for sluice development and CI, on loopback, without Docker.
#
#   scripts/services.sh up      start what is not running, wait until ready
#   scripts/services.sh up --no-s3
#                               the same without Garage and the TLS broker (the demo)
#   scripts/services.sh down    stop what `up` started (not PostgreSQL/Redis)
#   scripts/services.sh status  show what runs
#   scripts/services.sh stop-broker / start-broker
#                               stop / start nisshi alone (outage tests)
#   scripts/services.sh reset   stop, then delete all local pipeline data:
#                               .sluice/, data/, database sluice_kafka and the
#                               Redis feature keys
#
# Services (endpoints and credentials come from dev.env):
#   PostgreSQL  127.0.0.1:5432   started if down (storage for nisshi)
#   Redis       127.0.0.1:6379   started if down
#   nisshi      127.0.0.1:9092   Kafka API, PostgreSQL storage, SASL/SCRAM
#   nisshi-tls  127.0.0.1:9093   the same over TLS (SASL_SSL), for the TLS
#                                tests; its certificate is signed by a CA
#                                made here, in .sluice/tls/ca.pem
#   registry    127.0.0.1:8081   `sluice registry` (embedded schema registry)
#   Garage      127.0.0.1:3900   S3 API (RPC 3901, admin 3903)
#
# Pid files are .sluice/<service>.pid, logs .sluice/logs/<service>.log.
# Environment: SLUICE_BIN (default $CARGO_TARGET_DIR/release/sluice, or
# target/release/sluice), SLUICE_SERVICE_TIMEOUT (seconds per service, 90).
set -euo pipefail

# shellcheck source=scripts/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

STATE_DIR=$ROOT/.sluice
LOG_DIR=$STATE_DIR/logs
TIMEOUT=${SLUICE_SERVICE_TIMEOUT:-90}

PG_PORT=5432
KAFKA_DB=sluice_kafka
# The broker's URL must name localhost: the server certificate is for localhost.
KAFKA_STORAGE=postgres://postgres:postgres@localhost:$PG_PORT/$KAFKA_DB
KAFKA_PORT=9092
KAFKA_URL=tcp://127.0.0.1:$KAFKA_PORT
# The TLS broker keeps nothing between starts: its database is made afresh.
KAFKA_TLS_DB=sluice_kafka_tls
KAFKA_TLS_PORT=9093
TLS_DIR=$STATE_DIR/tls
# start-broker: keep the admin user made earlier in the same database.
REUSE_USERS=0
REGISTRY_PORT=8081
REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
REDIS_PORT=6379
GARAGE_S3_PORT=3900
GARAGE_RPC_PORT=3901
GARAGE_ADMIN_PORT=3903
GARAGE_DIR=$STATE_DIR/garage
GARAGE_CONFIG=$GARAGE_DIR/garage.toml
# Development-only RPC secret of the single-node Garage cluster.
GARAGE_RPC_SECRET=aa6151e8df08451a558a3fd328bf4f3391311dabcb15b863292d7e9a3f915b38
GARAGE_KEY_NAME=sluice-dev
# Written once the Kafka database belongs to this .sluice/ (see ensure_kafka_db).
KAFKA_DB_MARKER=$STATE_DIR/kafka-db.created


export PGHOST=localhost PGPORT=$PG_PORT PGUSER=postgres PGPASSWORD=postgres PGCONNECT_TIMEOUT=5

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Who listens on a TCP port, for error messages.
port_owner() {
    local owner=""
    if command -v ss >/dev/null; then
        owner=$(ss -ltnpH "( sport = :$1 )" 2>/dev/null | grep -o 'users:(.*)' | head -n 1 || true)
    fi
    printf '%s' "${owner:-an unknown process}"
}

port_free_or_die() {
    local port=$1 service=$2
    if port_open "$port"; then
        die "cannot start $service: port 127.0.0.1:$port is already in use by $(port_owner "$port"), which this script did not start. Stop it or free the port."
    fi
}

pid_file() { printf '%s/%s.pid' "$STATE_DIR" "$1"; }

# The pid of a service this script started, if it still runs that program.
service_pid() {
    local file pid
    file=$(pid_file "$1")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$2"* ]] || return 1
    printf '%s' "$pid"
}

# start_bg SERVICE LOGFILE COMMAND...: run detached (own session, so an
# interrupted make or CI step does not take it down), record its pid.
start_bg() {
    local service=$1 logfile=$2
    shift 2
    mkdir -p "$LOG_DIR"
    printf '\n=== %s: %s\n' "$(date -Is)" "$*" >>"$logfile"
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$(pid_file "$service")"
}

# wait_until SERVICE PID LOGFILE DESCRIPTION COMMAND...: poll COMMAND until it
# succeeds; fail early if PID exits, fail after $TIMEOUT seconds.
wait_until() {
    local service=$1 pid=$2 logfile=$3 what=$4
    shift 4
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$service exited before $what; see $logfile"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2 || true
            if [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; then
                log "stopped $service (pid $pid)"
            fi
            die "$service did not become ready ($what) within ${TIMEOUT}s; see $logfile"
        fi
        sleep 0.2
    done
}

# stop SERVICE PATTERN: stop a service this script started.
stop() {
    local service=$1 pattern=$2 pid file
    file=$(pid_file "$service")
    if pid=$(service_pid "$service" "$pattern"); then
        log "stopping $service (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "$service (pid $pid) ignored SIGTERM for 20s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
    fi
    rm -f "$file"
}

# Log lines written after a given line count (to see this start's output only).
log_since() { tail -n "+$(($2 + 1))" "$1" 2>/dev/null; }
line_count() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
log_says() { grep -q -- "$3" < <(log_since "$1" "$2"); }

# ---------------------------------------------------------------- PostgreSQL

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }

ensure_postgres() {
    if pg_ready; then
        log "postgresql: ready on 127.0.0.1:$PG_PORT"
        return
    fi
    port_free_or_die "$PG_PORT" postgresql
    local cluster logfile=$LOG_DIR/postgresql-start.log
    mkdir -p "$LOG_DIR"
    cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1 " " $2; exit }')
    [[ -n $cluster ]] || die "postgresql is not running and no cluster on port $PG_PORT was found (pg_lsclusters)"
    log "postgresql: starting cluster $cluster"
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster start >>"$logfile" 2>&1 ||
        die "postgresql cluster $cluster did not start; see $logfile and /var/log/postgresql/"
    wait_until postgresql "" "$logfile" "pg_isready" pg_ready
    log "postgresql: ready"
}

psql_q() { psql -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }

kafka_db_exists() { [[ $(psql_q -c "SELECT 1 FROM pg_database WHERE datname = '$KAFKA_DB'") == 1 ]]; }

# The Kafka log lives in PostgreSQL, the schema registry's ids in
# .sluice/registry.json. They describe one another (records carry registry
# ids), so they must start and end together: a fresh .sluice/ (a new clone,
# CI, `reset`) gets a fresh Kafka database.
ensure_kafka_db() {
    if [[ ! -f $KAFKA_DB_MARKER ]] && kafka_db_exists; then
        log "nisshi: fresh .sluice/ state: dropping the old database $KAFKA_DB (its records reference schema ids of a registry that no longer exists)"
        dropdb --if-exists "$KAFKA_DB" ||
            die "cannot drop database $KAFKA_DB; is another broker using it? (psql -c 'SELECT * FROM pg_stat_activity')"
        rm -f "$(users_marker nisshi)"
        clear_feature_keys
        log "nisshi: deleting data/ (the demo's lake and checkpoints describe the old records)"
        rm -rf "$ROOT/data"
    fi
    if ! kafka_db_exists; then
        log "nisshi: creating database $KAFKA_DB"
        createdb "$KAFKA_DB" || die "createdb $KAFKA_DB failed"
        rm -f "$(users_marker nisshi)"
    fi
    touch "$KAFKA_DB_MARKER"
}

# ---------------------------------------------------------------- Redis

redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

ensure_redis() {
    if redis_ready; then
        log "redis: ready on 127.0.0.1:$REDIS_PORT"
        return
    fi
    port_free_or_die "$REDIS_PORT" redis
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    local logfile=/var/log/redis/ci.log datadir=/var/lib/redis
    if ! mkdir -p /var/log/redis "$datadir" 2>/dev/null || [[ ! -w /var/log/redis || ! -w $datadir ]]; then
        logfile=$LOG_DIR/redis.log datadir=$STATE_DIR/redis
        mkdir -p "$LOG_DIR" "$datadir"
    fi
    log "redis: starting (log $logfile)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$datadir" --logfile "$logfile" >/dev/null ||
        die "redis-server did not start; see $logfile"
    wait_until redis "" "$logfile" "PING answered" redis_ready
    log "redis: ready"
}

clear_feature_keys() {
    local prefix=${SLUICE_REDIS_PREFIX:-sluice:features}
    if redis_ready; then
        log "redis: deleting keys $prefix:*"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern "$prefix:*" |
            xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" del >/dev/null
    fi
}

# ---------------------------------------------------------------- nisshi

kafka_ready_since() { log_says "$1" "$2" "ready in" && port_open "$3"; }

# start_nisshi SERVICE LOGFILE PORT DATABASE [BROKER OPTIONS...]; waits until
# it is ready.
start_nisshi() {
    local service=$1 logfile=$2 port=$3 db=$4
    shift 4
    local url=tcp://127.0.0.1:$port from
    from=$(line_count "$logfile")
    start_bg "$service" "$logfile" nisshi broker \
        --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine "postgres://postgres:postgres@localhost:$PG_PORT/$db" "$@"
    local pid
    pid=$(<"$(pid_file "$service")")
    wait_until "$service" "$pid" "$logfile" "'ready in' logged and port $port open" \
        kafka_ready_since "$logfile" "$from" "$port"
}

# Written once a broker's database holds the admin's SCRAM user.
users_marker() { printf '%s/%s-users.created' "$STATE_DIR" "$1"; }

# ensure_broker SERVICE PORT DATABASE [BROKER OPTIONS...]: a broker with
# SCRAM authentication and the admin user, on a database that exists.
ensure_broker() {
    local service=$1 port=$2 db=$3
    shift 3
    local url=tcp://127.0.0.1:$port pid logfile=$LOG_DIR/$service.log bootlog=$LOG_DIR/$service-bootstrap.log
    if pid=$(service_pid "$service" nisshi) && port_open "$port"; then
        if [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *--authentication* ]]; then
            log "$service: already running (pid $pid) on $url"
            return
        fi
        log "$service: running without --authentication (pid $pid); restarting"
        stop "$service" nisshi
    fi
    stop "$service" nisshi             # a dead or half-started broker
    stop "$service-bootstrap" nisshi   # left by an interrupted bootstrap
    port_free_or_die "$port" "$service"
    command -v nisshi >/dev/null || die "nisshi not found in PATH; run 'make tools'"

    # SCRAM users can only be created while the broker runs without
    # authentication (nor TLS); `user create` is an upsert. A restart under
    # running clients (`start-broker`, the outage test's) must not bring the
    # broker up without authentication, even briefly: they would take that
    # for a refused login. So it skips this once the user was made in this
    # database; `up` makes it again (another checkout may have dropped the
    # database since).
    local users_marker
    users_marker=$(users_marker "$service")
    if ((REUSE_USERS)) && [[ -f $users_marker ]]; then
        log "$service: SCRAM user $SLUICE_ADMIN_USER exists in database $db"
    else
        log "$service: bootstrapping SCRAM user $SLUICE_ADMIN_USER (log $bootlog)"
        start_nisshi "$service-bootstrap" "$bootlog" "$port" "$db"
        nisshi user create --broker "$url" "$SLUICE_ADMIN_USER" "$SLUICE_ADMIN_PASSWORD" >>"$bootlog" 2>&1 ||
            { stop "$service-bootstrap" nisshi; die "nisshi user create failed; see $bootlog"; }
        stop "$service-bootstrap" nisshi
        local deadline=$((SECONDS + TIMEOUT))
        while port_open "$port"; do
            ((SECONDS < deadline)) || die "port $port still open after stopping the bootstrap broker"
            sleep 0.2
        done
        touch "$users_marker"
    fi

    log "$service: starting with --authentication $* (log $logfile)"
    start_nisshi "$service" "$logfile" "$port" "$db" --authentication "$@"
    log "$service: ready on $url (pid $(<"$(pid_file "$service")"))"
}

ensure_nisshi() {
    ensure_kafka_db
    ensure_broker nisshi "$KAFKA_PORT" "$KAFKA_DB"
}

# A certificate authority of this checkout's own and a server certificate it
# signs for localhost and 127.0.0.1 (the TLS broker's, and the TLS Redis the
# tests start).
ensure_tls_certificates() {
    [[ -f $TLS_DIR/server.pem && -f $TLS_DIR/server.key && -f $TLS_DIR/ca.pem ]] && return
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    log "tls: making a certificate authority and a server certificate in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=sluice test CA" \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -days 30 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile server.ext -out server.pem
    ) >>"$LOG_DIR/tls.log" 2>&1 || die "openssl could not make the test certificates; see $LOG_DIR/tls.log"
}

ensure_nisshi_tls() {
    ensure_tls_certificates
    if ! service_pid nisshi-tls nisshi >/dev/null; then
        dropdb --if-exists "$KAFKA_TLS_DB" || die "cannot drop database $KAFKA_TLS_DB"
        createdb "$KAFKA_TLS_DB" || die "createdb $KAFKA_TLS_DB failed"
        rm -f "$(users_marker nisshi-tls)"
    fi
    ensure_broker nisshi-tls "$KAFKA_TLS_PORT" "$KAFKA_TLS_DB" --cert "$TLS_DIR/server.pem" --key "$TLS_DIR/server.key"
}

# ---------------------------------------------------------------- registry

registry_ready() { curl -sf -m 2 -o /dev/null "$REGISTRY_URL/subjects"; }

ensure_registry() {
    local pid logfile=$LOG_DIR/registry.log
    if pid=$(service_pid registry " registry ") && registry_ready; then
        log "registry: already running (pid $pid) on $REGISTRY_URL"
        return
    fi
    stop registry " registry "
    port_free_or_die "$REGISTRY_PORT" "the schema registry"
    if [[ ! -x $SLUICE_BIN ]]; then
        log "registry: SKIPPED: $SLUICE_BIN not found; build it with 'make build' (or set SLUICE_BIN) and run 'up' again"
        return
    fi
    log "registry: starting $SLUICE_BIN registry (log $logfile)"
    start_bg registry "$logfile" "$SLUICE_BIN" registry \
        --listen "127.0.0.1:$REGISTRY_PORT" --data-file "$STATE_DIR/registry.json"
    pid=$(<"$(pid_file registry)")
    wait_until registry "$pid" "$logfile" "GET $REGISTRY_URL/subjects" registry_ready
    log "registry: ready on $REGISTRY_URL (pid $pid)"
}

# ---------------------------------------------------------------- Garage

garage_cli() { garage -c "$GARAGE_CONFIG" "$@"; }
garage_ready() { garage_cli status; }
garage_s3_ready() { [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GARAGE_S3_PORT/") != 000 ]]; }
garage_healthy() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$GARAGE_ADMIN_PORT/health"; }

write_garage_config() {
    mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    local tmp=$GARAGE_CONFIG.tmp
    # Garage refuses a config holding a secret that others can read.
    (umask 077 && : >"$tmp")
    cat >"$tmp" <<EOF
# Written by scripts/services.sh: a single-node, loopback-only Garage for development.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "$AWS_REGION"
api_bind_addr = "127.0.0.1:$GARAGE_S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
EOF
    if cmp -s "$tmp" "$GARAGE_CONFIG"; then rm -f "$tmp"; else mv "$tmp" "$GARAGE_CONFIG"; fi
    chmod 600 "$GARAGE_CONFIG"
}

configure_garage() {
    local logfile=$1 node layout
    # (Captured, not piped into `grep -q`: garage panics on a closed stdout.)
    layout=$(garage_cli layout show 2>>"$logfile") || die "garage layout show failed; see $logfile"
    # Version 0: no layout applied yet (a role may be staged by an interrupted run).
    if [[ $layout =~ Current\ cluster\ layout\ version:\ 0($|[^0-9]) ]]; then
        node=$(garage_cli node id -q 2>>"$logfile" | cut -d@ -f1)
        [[ -n $node ]] || die "garage: cannot read the node id; see $logfile"
        log "garage: assigning layout role to node ${node:0:16}"
        garage_cli layout assign -z dc1 -c 1G "$node" >>"$logfile" 2>&1 || die "garage layout assign failed; see $logfile"
        garage_cli layout apply --version 1 >>"$logfile" 2>&1 || die "garage layout apply failed; see $logfile"
    fi
    if ! garage_cli key info "$AWS_ACCESS_KEY_ID" >/dev/null 2>&1; then
        log "garage: importing key $AWS_ACCESS_KEY_ID as $GARAGE_KEY_NAME"
        garage_cli key import --yes -n "$GARAGE_KEY_NAME" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >>"$logfile" 2>&1 ||
            die "garage key import failed; see $logfile"
    fi
    if ! garage_cli bucket info "$SLUICE_S3_BUCKET" >/dev/null 2>&1; then
        log "garage: creating bucket $SLUICE_S3_BUCKET"
        garage_cli bucket create "$SLUICE_S3_BUCKET" >>"$logfile" 2>&1 || die "garage bucket create failed; see $logfile"
    fi
    garage_cli bucket allow --read --write --owner "$SLUICE_S3_BUCKET" --key "$GARAGE_KEY_NAME" >>"$logfile" 2>&1 ||
        die "garage bucket allow failed; see $logfile"
}

ensure_garage() {
    local pid logfile=$LOG_DIR/garage.log
    write_garage_config
    if pid=$(service_pid garage garage) && garage_ready >/dev/null 2>&1; then
        log "garage: already running (pid $pid)"
    else
        stop garage garage
        local port
        for port in "$GARAGE_S3_PORT" "$GARAGE_RPC_PORT" "$GARAGE_ADMIN_PORT"; do
            port_free_or_die "$port" garage
        done
        command -v garage >/dev/null || die "garage not found in PATH; run 'make tools'"
        log "garage: starting (log $logfile)"
        start_bg garage "$logfile" garage -c "$GARAGE_CONFIG" server
        pid=$(<"$(pid_file garage)")
        wait_until garage "$pid" "$logfile" "'garage status' answered" garage_ready
    fi
    configure_garage "$logfile"
    wait_until garage "$pid" "$logfile" "GET :$GARAGE_ADMIN_PORT/health" garage_healthy
    wait_until garage "$pid" "$logfile" "S3 API answering on :$GARAGE_S3_PORT" garage_s3_ready
    log "garage: ready, S3 on $SLUICE_S3_ENDPOINT, bucket $SLUICE_S3_BUCKET (pid $pid)"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    ensure_postgres
    ensure_redis
    ensure_nisshi
    ensure_registry
    if [[ ${1:-} == --no-s3 ]]; then
        log "all services up but Garage and the TLS broker (--no-s3)"
        return
    fi
    ensure_garage
    ensure_nisshi_tls
    log "all services up"
}

cmd_down() {
    stop registry " registry "
    stop nisshi nisshi
    stop nisshi-bootstrap nisshi
    stop nisshi-tls nisshi
    stop nisshi-tls-bootstrap nisshi
    stop garage garage
    log "stopped (PostgreSQL and Redis are left running)"
}

cmd_status() {
    local pid rc=0 s3=${1:-}
    row() { printf '%-10s %-8s %s\n' "$@"; }
    if pg_ready; then row postgresql up "127.0.0.1:$PG_PORT"; else row postgresql down "127.0.0.1:$PG_PORT"; rc=1; fi
    if redis_ready; then row redis up "$SLUICE_REDIS_URL"; else row redis down "$SLUICE_REDIS_URL"; rc=1; fi
    if pid=$(service_pid nisshi nisshi) && port_open "$KAFKA_PORT"; then
        row nisshi up "$KAFKA_URL pid $pid"
    else
        row nisshi down "$KAFKA_URL$(port_open "$KAFKA_PORT" && echo " (port used by $(port_owner "$KAFKA_PORT"))")"
        rc=1
    fi
    if [[ $s3 != --no-s3 ]]; then
        if pid=$(service_pid nisshi-tls nisshi) && port_open "$KAFKA_TLS_PORT"; then
            row nisshi-tls up "127.0.0.1:$KAFKA_TLS_PORT pid $pid"
        else
            row nisshi-tls down "127.0.0.1:$KAFKA_TLS_PORT"
            rc=1
        fi
    fi
    if pid=$(service_pid registry " registry ") && registry_ready; then
        row registry up "$REGISTRY_URL pid $pid"
    else
        row registry down "$REGISTRY_URL$(port_open "$REGISTRY_PORT" && echo " (port used by $(port_owner "$REGISTRY_PORT"))")"
        rc=1
    fi
    if pid=$(service_pid garage garage) && garage_healthy; then
        row garage up "$SLUICE_S3_ENDPOINT pid $pid"
    elif [[ $s3 == --no-s3 ]]; then
        row garage off "(not needed: --no-s3)"
    else
        row garage down "$SLUICE_S3_ENDPOINT$(port_open "$GARAGE_S3_PORT" && echo " (port used by $(port_owner "$GARAGE_S3_PORT"))")"
        rc=1
    fi
    return "$rc"
}

cmd_reset() {
    cmd_down
    log "deleting .sluice/ and data/"
    rm -rf "$STATE_DIR" "$ROOT/data"
    if pg_ready; then
        log "dropping database $KAFKA_DB"
        dropdb --if-exists "$KAFKA_DB" || die "cannot drop database $KAFKA_DB"
        dropdb --if-exists "$KAFKA_TLS_DB" || die "cannot drop database $KAFKA_TLS_DB"
    fi
    clear_feature_keys
}

case ${1:-} in
up) cmd_up "${2:-}" ;;
down) cmd_down ;;
status) cmd_status "${2:-}" ;;
reset) cmd_reset ;;
# For the broker-outage test: take the Kafka API away and bring it back.
stop-broker) stop nisshi nisshi ;;
start-broker)
    REUSE_USERS=1
    ensure_nisshi
    ;;
*)
    echo "usage: $0 up [--no-s3]|down|status [--no-s3]|reset|stop-broker|start-broker" >&2
    exit 2
    ;;
esac
