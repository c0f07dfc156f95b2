#!/usr/bin/env python3
"""The one table of `make bench`: every section appends its figures to the
file named by BENCH_TABLE, one JSON line each, and the end of the run prints
them together as the Markdown table BENCHMARKS.md keeps.

  bench_table.py add ROW CONTENDER FIGURE [RATIO [BASELINE]]
  bench_table.py print
"""
import datetime
import json
import os
import platform
import sys


def add(row, contender, figure, ratio=None, baseline=None):
    with open(os.environ["BENCH_TABLE"], "a") as f:
        f.write(json.dumps({"row": row, "contender": contender, "figure": figure,
                            "ratio": float(ratio) if ratio not in (None, "") else None,
                            "baseline": baseline}) + "\n")


def rows():
    with open(os.environ["BENCH_TABLE"]) as f:
        for line in f:
            r = json.loads(line)
            if "figure" not in r:  # a whole-process row of bench_timed.py
                r["figure"] = f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, {r['rss_mb']:.0f} MB peak RSS"
                if "records_per_cpu_s" in r:
                    r["figure"] += (f"; {r['records_per_cpu_s']:,.0f} records per CPU second "
                                    f"({r['per_core_ratio']:.2f}x per core)")
            yield r


def table():
    lines = ["| row | contender | figure | ratio | against |", "|---|---|---|---|---|"]
    for r in rows():
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
        lines.append(f"| {r['row']} | {r['contender']} | {r['figure']} | {ratio} | {r.get('baseline') or ''} |")
    return "\n".join(lines)


def main():
    if sys.argv[1] == "add":
        add(*sys.argv[2:])
        return
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nAll figures, {datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
          f"{platform.system()} {platform.release()} (the table BENCHMARKS.md keeps):\n")
    print(table())


if __name__ == "__main__":
    main()
