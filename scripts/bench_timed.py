#!/usr/bin/env python3
"""Times whole processes side by side, the way a user would time them: from
start to exit, each contender run RUNS times, interleaved (run 1 of every
contender, then run 2, ...) so that drift on the machine touches all alike.
Prints, per contender, the median wall time, CPU time (user + system) and
peak resident memory, and the ratio of its wall time to the first
contender's (the baseline).

Usage: bench_timed.py TITLE RUNS LABEL COMMAND [LABEL COMMAND ...]

With BENCH_RECORDS set (the records each contender processes), it also
prints records per CPU second (per core) and that figure's ratio to the
baseline's.

Each COMMAND is a bash command line; `{run}` in it becomes the run's number,
so that a consumer can join a fresh group each time. A contender that exits
with an error stops the benchmark. With BENCH_TABLE set to a file, one JSON
line per contender is appended to it (the summary table of `make bench`).
"""
import json
import os
import statistics
import subprocess
import sys
import time


def timed(command):
    """Wall seconds, CPU seconds and peak RSS (MB) of one whole process."""
    started = time.monotonic()
    # exec: the measured process is the command itself, not a shell around it.
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"bench: `{command}` exited with {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main():
    title, runs, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    contenders = list(zip(pairs[0::2], pairs[1::2]))
    figures = {label: [] for label, _ in contenders}
    for run in range(1, runs + 1):
        for label, command in contenders:
            figures[label].append(timed(command.replace("{run}", str(run))))
    base = statistics.median(w for w, _, _ in figures[contenders[0][0]])
    records = int(os.environ.get("BENCH_RECORDS", "0"))
    base_cpu = statistics.median(c for _, c, _ in figures[contenders[0][0]])
    print(f"\n{title} (median of {runs}, whole processes)")
    per_core_head = f" {'records/cpu_s':>14} {'per_core_ratio':>15}" if records else ""
    print(f"{'contender':<34} {'wall_s':>8} {'cpu_s':>7} {'rss_mb':>7} {'wall_ratio':>11}{per_core_head}")
    table = os.environ.get("BENCH_TABLE")
    for label, _ in contenders:
        wall = statistics.median(w for w, _, _ in figures[label])
        cpu = statistics.median(c for _, c, _ in figures[label])
        rss = statistics.median(r for _, _, r in figures[label])
        per_core = f" {records / cpu:14,.0f} {base_cpu / cpu:14.2f}x" if records else ""
        print(f"{label:<34} {wall:8.2f} {cpu:7.2f} {rss:7.0f} {wall / base:10.2f}x{per_core}")
        if table:
            with open(table, "a") as f:
                row = {"row": title, "contender": label, "wall_s": wall, "cpu_s": cpu, "rss_mb": rss,
                       "ratio": wall / base, "baseline": contenders[0][0]}
                if records:
                    row["records_per_cpu_s"] = records / cpu
                    row["per_core_ratio"] = base_cpu / cpu
                f.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
