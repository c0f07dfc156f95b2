"""Hot swap under load, against restarting the job: both are timed by this
script from the request (POST /module, or SIGTERM to the running job) until
the new module has processed a batch (the job's GET /module shows where it
took over). The swaps' pauses (how long the batch loop waited for each
exchange) come from the job's own report. Called by scripts/bench.sh."""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def free_addr():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def status(addr):
    with urllib.request.urlopen(f"http://{addr}/module", timeout=5) as r:
        return json.load(r)


def post(addr, path):
    body = json.dumps({"path": path}).encode()
    request = urllib.request.Request(f"http://{addr}/module", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.status, json.load(r)


def wait_until(check, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"bench: timed out waiting for {what}")


def sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# Every process started, killed on the way out if still running: a failed
# run must not leave a producer and a job loading the broker.
spawned = []


def spawn(args, **kwargs):
    process = subprocess.Popen(args, **kwargs)
    spawned.append(process)
    return process


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main():
    sluice, topic, module_a, module_b, lake = sys.argv[1:6]
    swaps, restarts, rate = int(os.environ.get("BENCH_SWAPS", 20)), int(os.environ.get("BENCH_RESTARTS", 3)), 20000
    base = [sluice, "--topic", topic, "--dlq-topic", f"{topic}-dlq"]
    subprocess.run(base + ["setup", "--partitions", "6"], check=True, stdout=subprocess.DEVNULL)
    # Enough load to outlast every swap and restart.
    producer = spawn(base + ["produce", "--module", "modules/producer.wasm", "--count", str(rate * 600),
                             "--rate", str(rate)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_job(module):
        addr = free_addr()
        job = spawn(base + ["run", "--job", "features", "--module", module, "--group", f"{topic}-features",
                            "--output-url", f"file://{lake}", "--redis-prefix", f"bench:{topic}",
                            "--max-wait-ms", "200", "--admin-listen", addr],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_until(lambda: status(addr)["active_took_over"], "the job's first batch")
        return job, addr

    job, addr = start_job(module_a)
    modules = [(module_b, sha256(module_b)), (module_a, sha256(module_a))]
    to_take_over = []
    for i in range(swaps):
        path, sha = modules[i % 2]
        started = time.monotonic()
        # The admin endpoint reads a relative path inside its modules
        # directory: name the file absolutely.
        code, answer = post(addr, os.path.abspath(path))
        assert code == 202, answer
        wait_until(lambda: (lambda s: s["active"]["sha256"] == sha and s["active_took_over"])(status(addr)),
                   f"swap {i}")
        to_take_over.append(time.monotonic() - started)
    restart_take_over = []
    pauses = None
    module = module_b
    for _ in range(restarts):
        started = time.monotonic()
        job.send_signal(signal.SIGTERM)
        stdout = job.communicate()[0]
        if pauses is None:
            report = json.loads(stdout.strip().splitlines()[-1])
            pauses = [s["pause_ms"] for s in report["swaps"]]
            assert len(pauses) == swaps, report
        job, addr = start_job(module)
        restart_take_over.append(time.monotonic() - started)
        module = module_a if module == module_b else module_b
    job.send_signal(signal.SIGTERM)
    job.communicate()
    producer.send_signal(signal.SIGTERM)
    producer.wait()

    print(f"\n{'hot swap':<10} {'swaps':>6} {'pause_p50_ms':>13} {'pause_p99_ms':>13} {'to_new_p50_s':>13} {'to_new_p99_s':>13}")
    print(f"{'in place':<10} {swaps:6d} {percentile(pauses, 50):13.3f} {percentile(pauses, 99):13.3f} "
          f"{percentile(to_take_over, 50):13.3f} {percentile(to_take_over, 99):13.3f}")
    print(f"{'restart':<10} {restarts:6d} {'-':>13} {'-':>13} {percentile(restart_take_over, 50):13.3f} "
          f"{percentile(restart_take_over, 99):13.3f}")
    print(f"time to new logic, restart / swap (p50): {percentile(restart_take_over, 50) / percentile(to_take_over, 50):.1f}x; "
          f"goal: pause p99 under 50 ms")
    if os.environ.get("BENCH_TABLE"):
        table = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_table.py"), "add"]
        row = f"{swaps} hot swaps under load"
        subprocess.run(table + [row, "swap in place", f"pause p50 {percentile(pauses, 50):.3f} ms, p99 "
                                f"{percentile(pauses, 99):.3f} ms; new logic after {percentile(to_take_over, 50):.2f} s (p50)",
                                str(percentile(restart_take_over, 50) / percentile(to_take_over, 50)), "restart (speed-up)"], check=True)
        subprocess.run(table + [row, "restart", f"new logic after {percentile(restart_take_over, 50):.2f} s (p50)"], check=True)


try:
    main()
finally:
    for process in spawned:
        if process.poll() is None:
            process.kill()
            process.wait()
