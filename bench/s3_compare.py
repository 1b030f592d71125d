#!/usr/bin/env python3
"""Backup to and restore from a local S3 server: arkiv against restic and rustic.

    bench/s3_compare.py DATASET [--rounds N] [--tools arkiv,restic,rustic] [--json OUT]

Starts a single-node Garage (compression off, as the issue asks, so the
server's own zstd does not blur the tools' figures) on loopback ports, then
for each round and each tool, into a fresh prefix of one bucket: init, cold
backup of DATASET, restore of the latest snapshot (compared byte for byte
with DATASET). Wall time and peak RSS come from GNU time. Tools take turns
within a round so that drift of the shared machine hits all of them alike;
the summary gives each step's median over the rounds and arkiv's ratio to
each peer. Garage runs on the same 2 cores as the tools.

Binaries: $ARKIV_BIN (default target/release/arkiv), restic on PATH,
$RUSTIC_BIN (default /opt/rustic/bin/rustic). garage must be on PATH.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

PW = "bench-password-not-secret"
ACCESS = "GK" + "0123456789abcdef01234567"
SECRET = "0123456789abcdef" * 4
BUCKET = "bench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_garage(work):
    rpc, s3 = free_port(), free_port()
    cfg = os.path.join(work, "garage.toml")
    with open(cfg, "w") as f:
        f.write(f"""metadata_dir = "{work}/meta"
data_dir = "{work}/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{'ab' * 32}"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
""")
    env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=ACCESS, GARAGE_DEFAULT_SECRET_KEY=SECRET,
               GARAGE_DEFAULT_BUCKET=BUCKET)
    log = open(os.path.join(work, "garage.log"), "w")
    proc = subprocess.Popen(["garage", "-c", cfg, "server", "--single-node", "--default-bucket"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", s3), timeout=0.2).close()
            if "S3 API server listening" in open(os.path.join(work, "garage.log")).read():
                time.sleep(0.5)
                return proc, s3
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("garage did not start; see " + os.path.join(work, "garage.log"))


def timed(cmd, env, cwd=None):
    full = ["/usr/bin/time", "-f", "__TIME__ %e %M"] + cmd
    t0 = time.time()
    p = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True)
    wall, rss = time.time() - t0, 0.0
    for line in p.stderr.splitlines():
        if line.startswith("__TIME__"):
            _, e, m = line.split()
            wall, rss = float(e), int(m) / 1024
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, rss


def same_tree(a, b):
    return subprocess.run(["diff", "-r", "-q", a, b], capture_output=True).returncode == 0


def find_restored(target, src):
    nested = os.path.join(target, src.lstrip("/"))
    return nested if os.path.isdir(nested) else target


def tools(port, work):
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               ARKIV_PASSWORD=PW, RESTIC_PASSWORD=PW, RUSTIC_PASSWORD=PW, RUSTIC_NO_PROGRESS="true")
    arkiv = os.environ.get("ARKIV_BIN", "target/release/arkiv")
    rustic = os.environ.get("RUSTIC_BIN", "/opt/rustic/bin/rustic")
    cache = os.path.join(work, "cache")

    def arkiv_cmds(prefix):
        r = f"s3://{BUCKET}/{prefix}?endpoint={endpoint}"
        base = [arkiv, "--repo", r, "--cache-dir", cache + "/arkiv", "--no-progress"]
        return {"init": base + ["init"], "backup": lambda src: base + ["backup", src],
                "restore": lambda t: base + ["restore", "latest", "--target", t]}, None

    def restic_cmds(prefix):
        r = f"s3:{endpoint}/{BUCKET}/{prefix}"
        base = ["restic", "-r", r, "--cache-dir", cache + "/restic", "-q"]
        return {"init": base + ["init"], "backup": lambda src: base + ["backup", src],
                "restore": lambda t: base + ["restore", "latest", "--target", t]}, None

    def rustic_cmds(prefix):
        d = os.path.join(work, "rustic-profile", prefix)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "bench.toml"), "w") as f:
            f.write(f"""[repository]
repository = "opendal:s3"
password = "{PW}"
[repository.options]
bucket = "{BUCKET}"
root = "/{prefix}"
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "{ACCESS}"
secret_access_key = "{SECRET}"
""")
        base = [rustic, "-P", "bench", "--no-progress", "--cache-dir", cache + "/rustic"]
        return {"init": base + ["init"], "backup": lambda src: base + ["backup", src],
                "restore": lambda t: base + ["restore", "latest", t]}, d

    out = {"arkiv": arkiv_cmds, "restic": restic_cmds}
    if os.path.exists(rustic) or shutil.which(rustic):
        out["rustic"] = rustic_cmds
    return out, env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default="arkiv,restic,rustic")
    ap.add_argument("--work", default=os.environ.get("ARKIV_BENCH_WORK", "/var/tmp/arkiv-bench/s3work"))
    ap.add_argument("--json")
    a = ap.parse_args()
    src = os.path.abspath(a.dataset)
    # Not deleted here: a work directory emptied moments before slows the
    # first restores of this run (see the comment on `target` below).
    if os.path.exists(a.work) and os.listdir(a.work):
        sys.exit(f"{a.work} is not empty: give a new --work directory (delete old ones some minutes before a run)")
    os.makedirs(a.work, exist_ok=True)
    garage, port = start_garage(a.work)
    results = []
    try:
        available, env = tools(port, a.work)
        wanted = [t for t in a.tools.split(",") if t in available]
        for rnd in range(a.rounds):
            for name in wanted:
                cmds, cwd = available[name](f"{name}-{rnd}")
                shutil.rmtree(os.path.join(a.work, "cache"), ignore_errors=True)
                # A fresh target each time, kept until the end: ext4 without
                # a journal (this machine's root file system) skips inodes
                # freed in the last 60-300 s when it creates files, and
                # restoring 18,000 files into a directory emptied moments
                # before spent most of its time in that scan, for every tool.
                target = os.path.join(a.work, "restores", f"{name}-{rnd}")
                timed(cmds["init"], env, cwd)
                bw, br = timed(cmds["backup"](src), env, cwd)
                rw, rr = timed(cmds["restore"](target), env, cwd)
                ok = same_tree(src, find_restored(target, src))
                row = {"round": rnd, "tool": name, "backup_s": bw, "backup_rss_mb": round(br),
                       "restore_s": rw, "restore_rss_mb": round(rr), "restore_identical": ok}
                print(json.dumps(row), flush=True)
                results.append(row)
    finally:
        garage.kill()
        garage.wait()
        shutil.rmtree(os.path.join(a.work, "restores"), ignore_errors=True)
    summary = {}
    for name in {r["tool"] for r in results}:
        rows = [r for r in results if r["tool"] == name]
        summary[name] = {k: statistics.median(r[k] for r in rows)
                         for k in ("backup_s", "backup_rss_mb", "restore_s", "restore_rss_mb")}
        summary[name]["all_identical"] = all(r["restore_identical"] for r in rows)
    print("\n| tool | backup s (median) | backup RSS MB | restore s (median) | restore RSS MB | identical |")
    print("|---|---|---|---|---|---|")
    for name, s in sorted(summary.items()):
        print(f"| {name} | {s['backup_s']:.1f} | {s['backup_rss_mb']:.0f} | {s['restore_s']:.1f} | "
              f"{s['restore_rss_mb']:.0f} | {s['all_identical']} |")
    if "arkiv" in summary:
        for peer in sorted(set(summary) - {"arkiv"}):
            print(f"arkiv / {peer}: backup {summary['arkiv']['backup_s'] / summary[peer]['backup_s']:.2f}x, "
                  f"restore {summary['arkiv']['restore_s'] / summary[peer]['restore_s']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dataset": src, "rounds": a.rounds, "results": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
