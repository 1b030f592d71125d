#!/usr/bin/env python3
"""The daemon's API under load while a backup runs, and the daemon at rest.

    python3 bench/api_load.py [--rate 200] [--seconds 30] [--size-mb 1024] [--arkiv target/release/arkiv]

Sets up a repository and a generated dataset (../shared/bench/gen_dataset.py)
in a scratch directory, starts `arkiv serve`, triggers a backup of the
dataset through the API and, while it runs, sends GET /v1/sources at a fixed
rate (open loop: each request has a scheduled send time, and its latency is
counted from that time, so a slow server cannot hide its queueing by slowing
the client down). Then measures the idle daemon: resident memory and CPU
time over a quiet minute. Prints one JSON document with every figure.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_stat(pid):
    """(rss_bytes, cpu_seconds) of a process from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return rss, cpu


def request(conn, method, path, token, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--arkiv", default=os.path.join(ROOT, "target/release/arkiv"))
    ap.add_argument("--scratch", default=None)
    a = ap.parse_args()

    scratch = a.scratch or tempfile.mkdtemp(prefix="arkiv-api-bench-")
    data = os.path.join(scratch, "data")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(ROOT, "../shared/bench/gen_dataset.py"), data,
                        "--size-mb", str(a.size_mb)], check=True, stdout=subprocess.DEVNULL)
    repo = os.path.join(scratch, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(os.path.join(scratch, "state"), ignore_errors=True)
    pw = os.path.join(scratch, "pw")
    with open(pw, "w") as f:
        f.write("bench-password\n")
    subprocess.run([a.arkiv, "init", "--repo", repo, "--password-file", pw, "-q"], check=True)
    port = free_port()
    token = "bench-token-" + "x" * 24
    with open(os.path.join(scratch, "token"), "w") as f:
        f.write(token + "\n")
    config = os.path.join(scratch, "arkiv.toml")
    with open(config, "w") as f:
        f.write(f"""
[daemon]
listen = "127.0.0.1:{port}"
catalog = "{scratch}/state/catalog.db"
[users.bench]
role = "operator"
token_file = "{scratch}/token"
[repositories.main]
url = "{repo}"
password_file = "{pw}"
[sources.data]
paths = ["{data}"]
schedule = {{ cron = "0 3 * * *" }}
rpo = "1d"
""")
    daemon = subprocess.Popen([a.arkiv, "-c", config, "serve"], stderr=subprocess.PIPE, text=True)
    try:
        # Wait for the listener.
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("daemon did not become ready")
            time.sleep(0.1)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status, body = request(conn, "POST", "/v1/jobs", token, json.dumps({"job": "backup:data"}))
        assert status == 202, (status, body)
        run_id = json.loads(body)["id"]
        # Until the backup is running.
        while json.loads(request(conn, "GET", f"/v1/jobs/{run_id}", token)[1])["status"] == "queued":
            time.sleep(0.05)

        n = int(a.rate * a.seconds)
        interval = 1.0 / a.rate
        start = time.perf_counter() + 0.2
        wall0 = time.time() + 0.2
        latencies = [None] * n
        sent_at = [None] * n
        errors = []
        next_index = [0]
        lock = threading.Lock()

        def worker():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= n:
                    return
                due = start + i * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                try:
                    st, _ = request(c, "GET", "/v1/sources", token)
                    if st != 200:
                        errors.append(st)
                except Exception as e:  # noqa: BLE001 - counted, not fatal
                    errors.append(repr(e))
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                latencies[i] = (time.perf_counter() - due) * 1000
                sent_at[i] = wall0 + (due - start)

        threads = [threading.Thread(target=worker) for _ in range(a.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        run_during = json.loads(request(conn, "GET", f"/v1/jobs/{run_id}", token)[1])
        # Let the backup finish, then measure the idle daemon.
        while True:
            run = json.loads(request(conn, "GET", f"/v1/jobs/{run_id}", token)[1])
            if run["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        time.sleep(5)
        rss0, cpu0 = proc_stat(daemon.pid)
        time.sleep(a.idle_seconds)
        rss1, cpu1 = proc_stat(daemon.pid)

        lat = sorted(x for x in latencies if x is not None)

        def epoch(t):
            from datetime import datetime
            return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()

        b0, b1 = epoch(run["started_at"]), epoch(run["ended_at"])
        during = sorted(x for x, t in zip(latencies, sent_at) if x is not None and b0 <= t <= b1)
        out = {
            "rate_target": a.rate,
            "requests": n,
            "achieved_rate": round(n / elapsed, 1),
            "errors": len(errors),
            "error_samples": errors[:5],
            "latency_ms": {
                "p50": round(percentile(lat, 50), 2),
                "p90": round(percentile(lat, 90), 2),
                "p99": round(percentile(lat, 99), 2),
                "max": round(lat[-1], 2) if lat else None,
                "mean": round(statistics.fmean(lat), 2) if lat else None,
            },
            "backup_running_at_end_of_load": run_during["status"] == "running",
            "during_backup": {
                "requests": len(during),
                "p50": round(percentile(during, 50), 2),
                "p99": round(percentile(during, 99), 2),
                "max": round(during[-1], 2) if during else None,
            },
            "backup_run": {k: run[k] for k in ("status", "started_at", "ended_at", "bytes", "files")},
            "idle": {
                "rss_mib": round(rss1 / 2**20, 1),
                "cpu_percent": round(100 * (cpu1 - cpu0) / a.idle_seconds, 3),
                "seconds": a.idle_seconds,
            },
        }
        print(json.dumps(out, indent=2))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        if not a.scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
