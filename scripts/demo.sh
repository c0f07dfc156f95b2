#!/usr/bin/env bash
# End-to-end demo on the local services (run via `make demo`, which builds the
# host and the guests and starts the services first):
#   produce 50,000 transactions -> back them up to Parquet -> compute per-user
#   features into Parquet and Redis -> replay the archive through the same
#   features module (backfill, Parquet only) -> inspect the results.
# Environment: SLUICE_BIN (default $CARGO_TARGET_DIR/release/sluice, or
# target/release/sluice), DEMO_COUNT (records to produce, 50000).
set -euo pipefail

# shellcheck source=scripts/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

COUNT=${DEMO_COUNT:-50000}
LAKE=$ROOT/data/lake
VENV=$ROOT/.sluice/venv

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

[[ -x $SLUICE_BIN ]] || die "$SLUICE_BIN not found; run 'make build' (or 'make demo')"
for m in producer backup features; do
    [[ -f modules/$m.wasm ]] || die "modules/$m.wasm not found; run 'make guests'"
done
bash scripts/services.sh status --no-s3 >/dev/null ||
    die "services are not all up; run 'make services-demo' (scripts/services.sh status --no-s3)"

# DuckDB for inspecting the archive, in a venv of its own (once).
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import duckdb' 2>/dev/null; then
    step "installing duckdb into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet duckdb
fi

step "sluice setup"
"$SLUICE_BIN" setup

step "sluice produce: $COUNT transactions"
"$SLUICE_BIN" produce --module modules/producer.wasm --count "$COUNT"

step "sluice run --job backup (until caught up)"
"$SLUICE_BIN" run --job backup --module modules/backup.wasm --until-caught-up --output-url "file://$LAKE"

step "sluice run --job features (until caught up)"
"$SLUICE_BIN" run --job features --module modules/features.wasm --until-caught-up --output-url "file://$LAKE"

BACKFILL=$ROOT/data/backfill
step "sluice backfill: the archive through the same features module, to $BACKFILL (no Kafka, no Redis)"
"$SLUICE_BIN" backfill --module modules/features.wasm --from "file://$LAKE" --output-url "file://$BACKFILL" --restart ||
    die "the backfill failed; an archive written before lineage was recorded needs 'make clean-data'"

step "archive files and row counts ($LAKE)"
"$VENV/bin/python" - "$LAKE" <<'EOF'
import os, sys
import duckdb

lake = sys.argv[1]
con = duckdb.connect()
for dataset in ("transactions", "transactions_features"):
    root = os.path.join(lake, dataset)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet")
    )
    print(f"{dataset}: {len(files)} files")
    total = 0
    for path in files:
        rows = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]
        total += rows
        print(f"  {os.path.relpath(path, lake)}  {rows} rows  {os.path.getsize(path)} bytes")
    print(f"  total: {total} rows")
EOF

step "5 sample feature values in Redis"
redis=(redis-cli -u "$SLUICE_REDIS_URL")
mapfile -t keys < <("${redis[@]}" --scan --pattern 'sluice:features:user:*' | head -n 5)
((${#keys[@]} > 0)) || die "no keys sluice:features:user:* in Redis"
for key in "${keys[@]}"; do
    echo "$key"
    "${redis[@]}" HGETALL "$key" | paste - - | sed 's/^/  /'
done

step "DuckDB over the archive"
"$VENV/bin/python" - "$LAKE" <<'EOF'
import sys
import duckdb

lake = sys.argv[1]
con = duckdb.connect()
con.execute(
    f"CREATE VIEW transactions AS SELECT * FROM read_parquet('{lake}/transactions/**/*.parquet', hive_partitioning=true)"
)
con.execute(
    f"CREATE VIEW features AS SELECT * FROM read_parquet('{lake}/transactions_features/*/*.parquet', hive_partitioning=true)"
)
print("Top 5 users by transaction count:")
con.sql("""
    SELECT user_id, count(*) AS transactions, any_value(partition) AS partition
    FROM transactions GROUP BY user_id ORDER BY transactions DESC, user_id LIMIT 5
""").show()
print("Total amount per currency:")
con.sql("""
    SELECT currency, count(*) AS transactions, round(sum(amount), 2) AS total_amount
    FROM transactions GROUP BY currency ORDER BY currency
""").show()
print("Latest feature row of those top users (must equal their counts):")
con.sql("""
    WITH top AS (
        SELECT user_id, count(*) AS transactions FROM transactions
        GROUP BY user_id ORDER BY transactions DESC, user_id LIMIT 5
    )
    SELECT top.user_id, top.transactions, max(f.total_transactions_count) AS latest_feature_count
    FROM top JOIN features f USING (user_id) GROUP BY ALL ORDER BY top.transactions DESC, top.user_id
""").show()
EOF

step "backfill rows against the live job's rows"
"$VENV/bin/python" - "$LAKE" "$BACKFILL" <<'EOF'
import sys
import duckdb

live, backfill = (f"read_parquet('{root}/transactions_features/*/*.parquet')" for root in sys.argv[1:3])
con = duckdb.connect()
rows = con.execute(f"SELECT count(*) FROM {backfill}").fetchone()[0]
only_live = con.execute(f"SELECT count(*) FROM (SELECT * FROM {live} EXCEPT ALL SELECT * FROM {backfill})").fetchone()[0]
only_backfill = con.execute(f"SELECT count(*) FROM (SELECT * FROM {backfill} EXCEPT ALL SELECT * FROM {live})").fetchone()[0]
print(f"backfill rows: {rows}; rows only in the live output: {only_live}; only in the backfill: {only_backfill}")
if only_live or only_backfill:
    sys.exit("the backfill and the live job disagree")
EOF
