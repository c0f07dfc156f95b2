#!/usr/bin/env bash
# Throughput of sluice's backup and features jobs against the Python peer
# baseline (../shared/bench/peer.py: confluent-kafka + fastavro + pyarrow +
# redis-py), on the same broker, topic and registry, in one run. Prints
# records/s for both and the ratio. Needs the services (`make services`) and
# the guests (`make guests`); run with `make bench`.
#
# Environment: BENCH_COUNT (records, 200000), PEER_SCRIPT (path to peer.py),
# SLUICE_BIN (default $CARGO_TARGET_DIR/release/sluice or target/release/sluice).
set -euo pipefail

# shellcheck source=scripts/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

COUNT=${BENCH_COUNT:-200000}
PEER_SCRIPT=${PEER_SCRIPT:-$ROOT/../shared/bench/peer.py}
VENV=$ROOT/.sluice/peer-venv

[[ -f $PEER_SCRIPT ]] || { echo "bench: peer baseline not found at $PEER_SCRIPT (set PEER_SCRIPT)" >&2; exit 1; }
[[ -x $SLUICE_BIN ]] || { echo "bench: $SLUICE_BIN not found; run 'make build'" >&2; exit 1; }
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import confluent_kafka, fastavro, pyarrow, redis' 2>/dev/null; then
    echo "bench: installing the peer's requirements into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r "$(dirname "$PEER_SCRIPT")/requirements.txt"
fi

topic=bench-$(date +%s)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$SLUICE_BIN" --topic "$topic" --dlq-topic "$topic-dlq" setup --partitions 6 >/dev/null
"$SLUICE_BIN" --topic "$topic" produce --module modules/producer.wasm --count "$COUNT" >/dev/null
echo "bench: $COUNT records on topic $topic (6 partitions), nisshi with PostgreSQL storage and SASL/SCRAM"

field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }

printf '%-9s %14s %14s %8s\n' job sluice_rec_s peer_rec_s ratio
for job in backup features; do
    sluice_json=$("$SLUICE_BIN" --topic "$topic" --dlq-topic "$topic-dlq" run --job "$job" --module "modules/$job.wasm" \
        --group "$topic-sluice-$job" --until-caught-up --output-url "file://$out/sluice" \
        --redis-prefix "bench:$topic" 2>/dev/null)
    peer_json=$("$VENV/bin/python" "$PEER_SCRIPT" "$job" --count "$COUNT" --topic "$topic" --group "$topic-peer-$job" \
        --user "$SLUICE_ADMIN_USER" --password "$SLUICE_ADMIN_PASSWORD" --out "$out/peer-$job" 2>/dev/null)
    s=$(field records_per_s <<<"$sluice_json")
    p=$(field records_per_s <<<"$peer_json")
    python3 -c 'import sys; s, p = float(sys.argv[2]), float(sys.argv[3]); print(f"{sys.argv[1]:<9} {s:14.0f} {p:14.0f} {s / p:7.2f}x")' "$job" "$s" "$p"
done

# Dead letters in bulk: the backup job over the same good records with
# 10,000 malformed ones mixed in, against the clean run above.
BAD=${BENCH_BAD:-10000}
GOOD=${BENCH_DLQ_GOOD:-50000}
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
done

redis-cli --scan --pattern "bench:$topic:*" | xargs -r -n 500 redis-cli del >/dev/null
redis-cli --scan --pattern "peer:user:*" | xargs -r -n 500 redis-cli del >/dev/null
