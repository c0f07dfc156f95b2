#!/usr/bin/env bash
# Throughput of sluice's backup and features jobs against the Python peer
# baseline (../shared/bench/peer.py: confluent-kafka + fastavro + pyarrow +
# redis-py), on the same broker, topic and registry, in one run. Prints
# records/s for both and the ratio. Needs the services (`make services`) and
# the guests (`make guests`); run with `make bench`.
#
# Environment: BENCH_COUNT (records, 200000), BENCH_BACKFILL_COUNT (archived
# records for the backfill row, 5000000; 0 skips it), BENCH_STATE_USERS and
# BENCH_STATE_ROLL_ROWS (the state rows, below; 0 users skips them),
# BENCH_PRUNE_PER_DAY (the daily report row; 0 skips it), BENCH_PROBES, BENCH_RATE
# and BENCH_ROLL_SECONDS (the latency and object-size rows, below), BENCH_SWAPS (hot swaps
# under load, 20; 0 skips them), BENCH_RESTARTS (restarts they are compared
# with, 3), BENCH_ENGINE_COUNT (records of the engine rows, 1000000; 0 skips
# them), PEER_SCRIPT (path to peer.py),
# SLUICE_BIN (default $CARGO_TARGET_DIR/release/sluice or target/release/sluice).
set -euo pipefail

# shellcheck source=scripts/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export ROOT

COUNT=${BENCH_COUNT:-200000}
PEER_SCRIPT=${PEER_SCRIPT:-$ROOT/../shared/bench/peer.py}
VENV=$ROOT/.sluice/peer-venv

[[ -f $PEER_SCRIPT ]] || { echo "bench: peer baseline not found at $PEER_SCRIPT (set PEER_SCRIPT)" >&2; exit 1; }
[[ -x $SLUICE_BIN ]] || { echo "bench: $SLUICE_BIN not found; run 'make build'" >&2; exit 1; }
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import confluent_kafka, fastavro, pyarrow, redis, duckdb' 2>/dev/null; then
    echo "bench: installing the peer's requirements and DuckDB into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r "$(dirname "$PEER_SCRIPT")/requirements.txt" duckdb
fi

BASELINES=$(dirname "$PEER_SCRIPT")
RUNS=${BENCH_RUNS:-3}
topic=bench-$(date +%s)
out=$(mktemp -d)
# A failed run leaves no producer or job of its own loading the broker.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
timed() { "$VENV/bin/python" "$ROOT/scripts/bench_timed.py" "$@"; }
# Every section's figures, printed together at the end (scripts/bench_table.py).
export BENCH_TABLE=$out/table.jsonl
table() { python3 "$ROOT/scripts/bench_table.py" "$@"; }

# Producing COUNT records, whole processes: the bare librdkafka producer of
# pre-encoded records (the broker's floor), sluice with its defaults, and
# Python's encoding producer; each run into a topic of its own.
for run in $(seq "$RUNS"); do
    for who in bare sluice python; do
        "$SLUICE_BIN" --topic "$topic-$who-$run" --dlq-topic "$topic-dlq" setup --partitions 6 >/dev/null
    done
done
timed "produce $COUNT records" "$RUNS" \
    "bare librdkafka producer" "$VENV/bin/python $BASELINES/bare_producer.py $topic-bare-{run} $COUNT" \
    "sluice produce" "$SLUICE_BIN --topic $topic-sluice-{run} produce --module modules/producer.wasm --count $COUNT" \
    "python producer (fastavro)" "$VENV/bin/python $BASELINES/py_producer.py $topic-python-{run} $COUNT"

# Catching up on COUNT records, whole processes from start to exit, each in
# a fresh group: the bare librdkafka consumer (decodes nothing: the broker's
# floor), sluice's job with --until-caught-up, and the Python peer.
"$SLUICE_BIN" --topic "$topic" --dlq-topic "$topic-dlq" setup --partitions 6 >/dev/null
"$SLUICE_BIN" --topic "$topic" produce --module modules/producer.wasm --count "$COUNT" >/dev/null
echo "bench: $COUNT records on topic $topic (6 partitions), nisshi with PostgreSQL storage and SASL/SCRAM"
for job in backup features; do
    contenders=(
        "bare librdkafka consumer" "$VENV/bin/python $BASELINES/bare_consumer.py $topic $COUNT"
        "sluice run --job $job" "$SLUICE_BIN --topic $topic --dlq-topic $topic-dlq run --job $job \
            --module modules/$job.wasm --group $topic-sluice-$job-{run} --until-caught-up \
            --output-url file://$out/sluice-{run} --redis-prefix bench:$topic"
    )
    # The same run writing its objects to Garage over the S3 API, when it is up.
    if [[ -n ${SLUICE_S3_ENDPOINT:-} ]] && curl -s -o /dev/null "$SLUICE_S3_ENDPOINT"; then
        contenders+=(
            "sluice run --job $job, s3:// on Garage" "$SLUICE_BIN --topic $topic --dlq-topic $topic-dlq run \
                --job $job --module modules/$job.wasm --group $topic-sluice-s3-$job-{run} --until-caught-up \
                --output-url s3://$SLUICE_S3_BUCKET/$topic-{run} --redis-prefix bench:$topic"
        )
    fi
    contenders+=(
        "peer.py $job" "$VENV/bin/python $PEER_SCRIPT $job --count $COUNT --topic $topic \
            --group $topic-peer-$job-{run} --user $SLUICE_ADMIN_USER --password $SLUICE_ADMIN_PASSWORD \
            --out $out/peer-$job-{run}"
    )
    timed "catch up on $COUNT records: $job" "$RUNS" "${contenders[@]}"
done

# The engine, no broker: each job's decode, logic and sinks over one file of
# BENCH_ENGINE_COUNT pre-encoded records (the values of a topic, each a
# 4-byte big-endian length then the value, what peer.py --input reads), as
# whole processes: the guest source compiled natively into the engine
# binary (host/benches/engine.rs), the wasm guest through the same host
# code, and peer.py --input. records/cpu_s is records per CPU second: per core.
ENGINE=${BENCH_ENGINE_COUNT:-1000000}
if ((ENGINE > 0)); then
    t=bench-engine-$(date +%s)
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
    "$SLUICE_BIN" --topic "$t" produce --module modules/producer.wasm --count "$ENGINE" --batch 10000 >/dev/null
    "$VENV/bin/python" - "$t" "$ENGINE" "$out/engine.records" <<'PY'
import os, struct, sys, time
import confluent_kafka as ck
topic, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = ck.Consumer({"bootstrap.servers": os.environ["SLUICE_BROKERS"], "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": os.environ["SLUICE_ADMIN_USER"],
    "sasl.password": os.environ["SLUICE_ADMIN_PASSWORD"], "group.id": f"dump-{time.time_ns()}",
    "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic]); n = 0
deadline = time.monotonic() + 300
with open(path, "wb") as f:
    while n < count:
        if time.monotonic() > deadline:
            sys.exit(f"bench: read {n} of {count} records of {topic} in 5 minutes")
        for m in c.consume(10000, 1.0):
            if not m.error():
                f.write(struct.pack(">I", len(m.value())) + m.value()); n += 1
c.close()
PY
    cargo build --release -p sluice --bench engine --message-format=json >"$out/engine-build.json" \
        || { echo "bench: the engine benchmark did not build" >&2; exit 1; }
    engine_bin=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine" and m.get("executable"):
        print(m["executable"])' "$out/engine-build.json")
    for job in backup features; do
        BENCH_RECORDS=$ENGINE timed "engine, no broker: $job over $ENGINE records" "$RUNS" \
            "$job guest compiled natively" "$engine_bin $job native --input $out/engine.records --topic $t \
                --output-url file://$out/engine-native-$job-{run} --redis-prefix bench-engine:native" \
            "$job guest in wasm" "$engine_bin $job wasm --module modules/$job.wasm --input $out/engine.records \
                --topic $t --output-url file://$out/engine-wasm-$job-{run} --redis-prefix bench-engine:wasm" \
            "peer.py $job --input" "$VENV/bin/python $PEER_SCRIPT $job --count $ENGINE --input $out/engine.records \
                --out $out/engine-peer-$job-{run}"
    done
fi

field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }

# Dead letters in bulk: the backup job over the same good records with
# 10,000 malformed ones mixed in, against the clean run above.
BAD=${BENCH_BAD:-10000}
GOOD=${BENCH_DLQ_GOOD:-50000}
if ((BAD > 0)); then
printf '\n%-22s %10s %10s %12s\n' run records seconds time_ratio
clean_s=""
for kind in clean dirty; do
    t=bench-dlq-$kind-$(date +%s)
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
    "$SLUICE_BIN" --topic "$t" produce --module modules/producer.wasm --count "$GOOD" >/dev/null
    if [[ $kind == dirty ]]; then
        "$VENV/bin/python" - "$t" "$BAD" <<'PY'
import os, sys
from confluent_kafka import Producer
topic, bad = sys.argv[1], int(sys.argv[2])
p = Producer({"bootstrap.servers": os.environ["SLUICE_BROKERS"], "security.protocol": "SASL_PLAINTEXT",
              "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": os.environ["SLUICE_ADMIN_USER"],
              "sasl.password": os.environ["SLUICE_ADMIN_PASSWORD"], "partitioner": "murmur2_random"})
for i in range(bad):
    p.produce(topic, key=str(i % 1000), value=b"\x00\x00\x00\x00\x01\xff")  # truncated Avro body
    p.poll(0)
p.flush()
PY
    fi
    json=$("$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" run --job backup --module modules/backup.wasm \
        --group "$t-backup" --until-caught-up --output-url "file://$out/$t" 2>/dev/null)
    secs=$(field seconds <<<"$json")
    recs=$(field records <<<"$json")
    [[ -n $clean_s ]] || clean_s=$secs
    python3 -c 'import sys; print(f"{sys.argv[1]:<22} {int(sys.argv[2]):10d} {float(sys.argv[3]):10.2f} {float(sys.argv[3]) / float(sys.argv[4]):11.2f}x")' \
        "backup $kind" "$recs" "$secs" "$clean_s"
    table add "dead letters: $GOOD good records, $BAD malformed" "backup $kind" "$secs s busy" \
        "$(python3 -c 'import sys; print(float(sys.argv[1]) / float(sys.argv[2]))' "$secs" "$clean_s")" "backup clean"
done
fi

# Backfill: the features module over an archive of BENCH_BACKFILL_COUNT
# records written by the backup job, against DuckDB computing the same
# running count per user (a window function in offset order) over the same
# files. Both are whole processes timed by this script from start to exit,
# each reading the archive and writing its Parquet result.
BACKFILL=${BENCH_BACKFILL_COUNT:-5000000}
if ((BACKFILL > 0)); then
    t=bench-backfill-$(date +%s)
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
    "$SLUICE_BIN" --topic "$t" produce --module modules/producer.wasm --count "$BACKFILL" --batch 10000 >/dev/null
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" run --job backup --module modules/backup.wasm \
        --group "$t-backup" --until-caught-up --output-url "file://$out/archive" >/dev/null 2>&1
    objects=$(find "$out/archive/$t" -name '*.parquet' | wc -l)
    now() { date +%s.%N; }
    start=$(now)
    sluice_json=$("$SLUICE_BIN" --topic "$t" backfill --module modules/features.wasm \
        --from "file://$out/archive" --output-url "file://$out/backfill" 2>/dev/null)
    sluice_s=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$start" "$(now)")
    start=$(now)
    "$VENV/bin/python" - "$out/archive/$t" "$out/duckdb.parquet" <<'PY'
import sys, duckdb
archive, result = sys.argv[1], sys.argv[2]
# Users are partition-local and object names are zero-padded first offsets,
# so (name, row) orders each user's records by offset, as sluice does (the
# name without its folders: event-date folders sort before the partition).
duckdb.sql(f"""
COPY (
  SELECT user_id,
         count(*) OVER (PARTITION BY user_id ORDER BY parse_filename(filename), file_row_number
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS total_transactions_count,
         transaction_timestamp_millis AS as_of_timestamp_millis
  FROM read_parquet('{archive}/**/*.parquet', filename = true, file_row_number = true)
) TO '{result}' (FORMAT parquet, COMPRESSION snappy)
""")
PY
    duck_s=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$start" "$(now)")
    # Both computed the same thing: the same rows, the same last count per user.
    "$VENV/bin/python" - "$out/backfill/transactions_features" "$out/duckdb.parquet" <<'PY'
import sys, duckdb
ours, theirs = sys.argv[1], sys.argv[2]
q = "SELECT count(*), sum(m), count(DISTINCT user_id) FROM (SELECT user_id, max(total_transactions_count) m FROM read_parquet('{}') GROUP BY user_id)"
a = duckdb.sql(q.format(f"{ours}/*/*.parquet")).fetchall()
b = duckdb.sql(q.format(theirs)).fetchall()
assert a == b, f"sluice {a} != duckdb {b}"
PY
    records=$(field records <<<"$sluice_json")
    printf '\n%-9s %10s %8s %14s %14s %8s\n' run records objects sluice_rec_s duckdb_rec_s ratio
    python3 -c 'import sys; n, o, s, d = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]); print(f"{sys.argv[1]:<9} {n:10d} {o:8d} {n / s:14.0f} {n / d:14.0f} {d / s:7.2f}x")' \
        backfill "$records" "$objects" "$sluice_s" "$duck_s"
    table add "backfill of $records archived records" "sluice backfill" "$(python3 -c 'import sys; print(f"{float(sys.argv[1]):.2f} s", end="")' "$sluice_s")" \
        "$(python3 -c 'import sys; print(float(sys.argv[2]) / float(sys.argv[1]))' "$sluice_s" "$duck_s")" "DuckDB window count (speed-up)"
    table add "backfill of $records archived records" "DuckDB window count" "$(python3 -c 'import sys; print(f"{float(sys.argv[1]):.2f} s", end="")' "$duck_s")"
fi

# A daily report over the archive: BENCH_PRUNE_PER_DAY (300,000) records on
# each of three days, archived by the backup job in rolls of a quarter of a
# day's records per partition (in event-date folders), then one day's count
# and sum by DuckDB and by SparkSQL (pyspark, local mode). Prints the bytes
# each read for the whole archive and for the one day (the process's read()
# bytes, /proc/<pid>/io), the objects in the day's folder, and the filter each pushed
# into its scan: the day's `event_date=` folder, so neither opens the other
# days' objects.
PRUNE=${BENCH_PRUNE_PER_DAY:-300000}
if ((PRUNE > 0)); then
    if ! "$VENV/bin/python" -c 'import pyspark' 2>/dev/null; then
        echo "bench: installing pyspark into $VENV (SparkSQL for the daily report row)" >&2
        "$VENV/bin/pip" install --quiet 'pyspark==3.5.3'
    fi
    t=bench-prune-$(date +%s)
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
    today=$(( $(date +%s) / 86400 * 86400000 ))
    for day in 2 1 0; do
        "$SLUICE_BIN" --topic "$t" produce --module modules/producer.wasm --count "$PRUNE" --batch 10000 \
            --first-index $(( (2 - day) * PRUNE )) --start-millis $(( today - day * 86400000 - (2 - day) * PRUNE )) >/dev/null
    done
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" run --job backup --module modules/backup.wasm \
        --group "$t-backup" --until-caught-up --roll-rows $(( PRUNE / 24 )) --output-url "file://$out/prune" >/dev/null 2>&1
    "$VENV/bin/python" - "$out/prune/$t" "$(( today - 86400000 ))" <<'PY'
import datetime, glob, os, re, sys
archive, day_start = sys.argv[1], int(sys.argv[2])
day = datetime.datetime.fromtimestamp(day_start / 1000, datetime.timezone.utc).date().isoformat()
files = glob.glob(f"{archive}/**/*.parquet", recursive=True)
day_files = [f for f in files if f"/event_date={day}/" in f]
whole_q = "SELECT count(*), sum(amount) FROM archive"
day_q = f"{whole_q} WHERE event_date = DATE '{day}'"

def read_bytes(pid="self"):
    with open(f"/proc/{pid}/io") as f:
        return int(next(l for l in f if l.startswith("rchar:")).split()[1])

def measured(run, pid="self"):
    before = read_bytes(pid)
    result = run()
    return result, read_bytes(pid) - before

import duckdb
con = duckdb.connect()
con.execute(f"CREATE VIEW archive AS SELECT * FROM read_parquet('{archive}/**/*.parquet', hive_partitioning = true)")
duck = {}
for name, q in (("whole", whole_q), ("day", day_q)):
    con.execute(q).fetchall()  # warm: the same work, so both runs read alike
    duck[name] = measured(lambda: con.execute(q).fetchall())
plan = con.execute(f"EXPLAIN {day_q}").fetchall()[0][1]
duck_filter = " ".join(l.strip("│ ") for l in plan.splitlines() if "event_date" in l or "Files" in l)
# DuckDB's own count of the files its scan read.
analyzed = con.execute(f"EXPLAIN ANALYZE {day_q}").fetchall()[0][1]
duck_files = " ".join(l.strip("│ ") for l in analyzed.splitlines() if "Files Read" in l or "Row Groups" in l)

from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "1g").config("spark.ui.showConsoleProgress", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.read.parquet(archive).createOrReplaceTempView("archive")
jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
sparks = {}
for name, q in (("whole", whole_q), ("day", day_q)):
    spark.sql(q).collect()
    sparks[name] = measured(lambda: spark.sql(q).collect(), jvm)
spark_plan = spark.sql(day_q)._jdf.queryExecution().executedPlan().toString()
pushed = re.search(r"PartitionFilters: \[.*?\](?=, PushedFilters)", spark_plan)
spark.stop()

assert duck["day"][0][0][0] == sparks["day"][0][0][0], (duck, sparks)
print(f"\n{'daily report':<14} {'objects':>8} {'day_obj':>8} {'rows_day':>9} {'whole_kb':>9} {'day_kb':>8} {'day/whole':>10}")
for engine, r in (("duckdb", duck), ("sparksql", sparks)):
    print(f"{engine:<14} {len(files):8d} {len(day_files):8d} {r['day'][0][0][0]:9d} {r['whole'][1] / 1024:9.0f} {r['day'][1] / 1024:8.0f} {r['day'][1] / max(r['whole'][1], 1):9.2f}x")
print(f"duckdb plan:     {duck_filter}; for the day: {duck_files}")
print(f"sparksql plan:   {pushed.group(0) if pushed else spark_plan}")
PY
fi

# Keyed state at scale: BENCH_STATE_USERS (1,000,000) distinct users, then a
# fifth as many updates, counted by the features job in rolls of
# BENCH_STATE_ROLL_ROWS (100,000) records per partition: what the default
# 5-minute interval holds at 2,000 records/s over 6 partitions. Reports the job's peak resident
# memory, its checkpoints (whole states and deltas: count and mean bytes and
# seconds each) and, after a restart, the time to load the state back.
STATE_USERS=${BENCH_STATE_USERS:-1000000}
if ((STATE_USERS > 0)); then
    STATE_ROLL_ROWS=${BENCH_STATE_ROLL_ROWS:-100000}
    t=bench-state-$(date +%s)
    "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
    first=$((STATE_USERS + STATE_USERS / 5))
    "$SLUICE_BIN" --topic "$t" produce --module modules/test/generator_users.wasm --seed "$STATE_USERS" \
        --count "$first" --batch 10000 >/dev/null
    # Peak RSS of a whole process, as its parent sees it.
    peak_rss() {
        python3 -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
sys.stdout.write(r.stdout.decode())
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024))
sys.exit(r.returncode)' "$@"
    }
    features_run() {
        peak_rss "$out/$t-rss" "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" run --job features \
            --module modules/features.wasm --group "$t-features" --until-caught-up --roll-rows "$STATE_ROLL_ROWS" \
            --output-url "file://$out/$t" --redis-prefix "bench:$t"
    }
    counted=$(features_run)
    counted_rss=$(cat "$out/$t-rss")
    "$SLUICE_BIN" --topic "$t" produce --module modules/test/generator_users.wasm --seed "$STATE_USERS" \
        --first-index "$first" --count 50000 --batch 10000 >/dev/null
    restarted=$(features_run)
    restarted_rss=$(cat "$out/$t-rss")
    python3 - "$STATE_USERS" "$counted" "$counted_rss" "$restarted" "$restarted_rss" <<'PY'
import json, sys
users, counted, counted_rss, restarted, restarted_rss = sys.argv[1:]
a, b = (json.loads(x.strip().splitlines()[-1]) for x in (counted, restarted))
c = a["checkpoints"]
deltas = c["written"] - c["whole"]
mean = lambda total, n: total / n if n else 0.0
print(f"\n{'state':<10} {'users':>9} {'peak_rss_mb':>12} {'whole':>6} {'whole_mb':>9} {'deltas':>7} {'delta_mb':>9} {'s_per_ckpt':>11} {'restore_s':>10}")
print(f"{'counting':<10} {int(users):9d} {int(counted_rss):12d} {c['whole']:6d} {mean(c['whole_bytes'], c['whole']) / 1e6:9.2f} "
      f"{deltas:7d} {mean(c['bytes'] - c['whole_bytes'], deltas) / 1e6:9.2f} {mean(c['seconds'], c['written']):11.3f} {'-':>10}")
print(f"{'restarted':<10} {b['restored_users']:9d} {int(restarted_rss):12d} {'':>6} {'':>9} {'':>7} {'':>9} {'':>11} {b['restore_seconds']:10.2f}")
import os, subprocess
add = lambda *a: subprocess.run(["python3", os.environ["ROOT"] + "/scripts/bench_table.py", "add", *map(str, a)], check=True)
add(f"state of {int(users):,} users", "features job counting", f"{counted_rss} MB peak RSS; {c['whole']} whole checkpoints of "
    f"{mean(c['whole_bytes'], c['whole']) / 1e6:.2f} MB, {deltas} deltas of {mean(c['bytes'] - c['whole_bytes'], deltas) / 1e6:.2f} MB, "
    f"{mean(c['seconds'], c['written']) * 1000:.0f} ms each")
add(f"state of {int(users):,} users", "features job restarted", f"{restarted_rss} MB peak RSS; restored in {b['restore_seconds']:.2f} s")
PY
    redis-cli --scan --pattern "bench:$t:*" | xargs -r -n 500 redis-cli del >/dev/null
fi

# Real-time freshness and object sizes at a steady BENCH_RATE (2,000)
# records/s over 6 partitions: the features job runs with its default roll
# settings while the producer loads the topic. The shared redis_latency.py
# probes Redis (BENCH_PROBES, 300, one every 100 ms), from the broker's
# acknowledgement to Redis showing the new count: first with the features
# job alone on the broker, then on a second topic that the backup job
# consumes too (on nisshi, every consumer's fetches query PostgreSQL, so a
# second one slows the first). On that topic both jobs then run on for
# BENCH_ROLL_SECONDS (660: two default 5-minute roll intervals), and the
# objects each rolled before the stop give objects per hour and rows per
# object.
PROBES=${BENCH_PROBES:-300}
if ((PROBES > 0)); then
    RATE=${BENCH_RATE:-2000}
    ROLL_SECONDS=${BENCH_ROLL_SECONDS:-660}
    LATENCY_SCRIPT=${LATENCY_SCRIPT:-$ROOT/../shared/bench/redis_latency.py}
    # A topic with its jobs, loaded by a producer at RATE from now on.
    pids=()
    start_load() {
        t=bench-latency-$1-$(date +%s)
        "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" setup --partitions 6 >/dev/null
        local job
        for job in "${@:2}"; do
            "$SLUICE_BIN" --topic "$t" --dlq-topic "$t-dlq" run --job "$job" --module "modules/$job.wasm" \
                --group "$t-$job" --output-url "file://$out/$t" --redis-prefix "bench:$t" \
                >"$out/$t-$job.json" 2>"$out/$t-$job.log" &
            pids+=($!)
        done
        for job in "${@:2}"; do
            for _ in $(seq 600); do grep -q "partitions assigned" "$out/$t-$job.log" && break; sleep 0.1; done
        done
        started=$(date +%s.%N)
        "$SLUICE_BIN" --topic "$t" produce --module modules/producer.wasm --rate "$RATE" \
            --count $((RATE * (ROLL_SECONDS + PROBES / 10 + 120))) >/dev/null 2>&1 &
        producer=$!
    }
    stop_load() {
        kill "$producer" 2>/dev/null || true
        kill -TERM "${pids[@]}"
        wait "${pids[@]}" || true
        pids=()
        redis-cli --scan --pattern "bench:$t:*" | xargs -r -n 500 redis-cli del >/dev/null
    }
    echo
    # The probe's summary line, into the table.
    latency_row() {
        python3 -c 'import re, sys; m = re.search(r"p50 ([\d.]+), p90 [\d.]+, p99 ([\d.]+), max ([\d.]+)", sys.stdin.read())
print(f"p50 {m[1]} ms, p99 {m[2]} ms, max {m[3]} ms" if m else "no summary")' <"$out/latency-$1.txt"
    }
    echo "features job alone on the broker:"
    start_load alone features
    SLUICE_REDIS_URL=$SLUICE_REDIS_URL "$VENV/bin/python" "$LATENCY_SCRIPT" "$t" "bench:$t" "$PROBES" | tee "$out/latency-alone.txt"
    table add "topic to Redis at $RATE records/s" "features job alone" "$(latency_row alone)"
    stop_load
    echo "with the backup job consuming the same topic:"
    start_load both features backup
    SLUICE_REDIS_URL=$SLUICE_REDIS_URL "$VENV/bin/python" "$LATENCY_SCRIPT" "$t" "bench:$t" "$PROBES" | tee "$out/latency-both.txt"
    table add "topic to Redis at $RATE records/s" "features job beside the backup job" "$(latency_row both)"
    sleep "$ROLL_SECONDS"
    stopped=$(date +%s.%N)
    kill "$producer" 2>/dev/null || true
    kill -TERM "${pids[@]}"
    wait "${pids[@]}" || true
    "$VENV/bin/python" - "$out/$t" "$t" "$started" "$stopped" "$RATE" <<'PY'
import os, statistics, sys
import pyarrow.parquet as pq
root, topic, started, stopped, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
hours = (stopped - started) / 3600
print(f"\n{'dataset':<22} {'objects':>8} {'per_hour':>9} {'rows_min':>9} {'rows_median':>12}   (at {rate} records/s, 6 partitions)")
for dataset in (topic, "transactions_features"):
    rows = []
    for folder, _, files in os.walk(os.path.join(root, dataset)):
        for name in files:
            path = os.path.join(folder, name)
            # Objects rolled while the producer ran, not the ones the stop rolled.
            if name.endswith(".parquet") and os.path.getmtime(path) < stopped - 1:
                rows.append(pq.ParquetFile(path).metadata.num_rows)
    if rows:
        print(f"{dataset[:22]:<22} {len(rows):8d} {len(rows) / hours:9.0f} {min(rows):9d} {statistics.median(rows):12.0f}")
        import subprocess
        subprocess.run(["python3", os.environ["ROOT"] + "/scripts/bench_table.py", "add", f"objects rolled at {rate} records/s",
                        "archive" if dataset == topic else "features", f"{len(rows) / hours:.0f} objects an hour, median "
                        f"{statistics.median(rows):.0f} rows"], check=True)
    else:
        print(f"{dataset[:22]:<22} {0:8d}   (none rolled within {hours * 3600:.0f} s)")
PY
    redis-cli --scan --pattern "bench:$t:*" | xargs -r -n 500 redis-cli del >/dev/null
fi

# Hot swap: 20 swaps of the features module under load (BENCH_SWAPS),
# against restarting the job with the other module (BENCH_RESTARTS).
if [[ ${BENCH_SWAPS:-20} -gt 0 ]]; then
    t=bench-swap-$(date +%s)
    "$VENV/bin/python" "$ROOT/scripts/bench_swap.py" "$SLUICE_BIN" "$t" modules/features.wasm \
        modules/test/features_rebuilt.wasm "$out/swap"
    redis-cli --scan --pattern "bench:$t:*" | xargs -r -n 500 redis-cli del >/dev/null
fi

redis-cli --scan --pattern "bench:$topic:*" | xargs -r -n 500 redis-cli del >/dev/null
redis-cli --scan --pattern "peer:user:*" | xargs -r -n 500 redis-cli del >/dev/null
table print
