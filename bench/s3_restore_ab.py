#!/usr/bin/env python3
"""Restores from one S3 repository with several arkiv binaries, taking turns.

    s3_restore_ab.py DATASET WORK ROUNDS BIN [BIN ...]

Starts a single-node Garage in WORK (as s3_compare.py does), backs DATASET
up once with the first binary, then for each round restores it with each
binary in turn into a new directory, and prints each time and the medians.
Built to tell a change to the restore path from run-to-run noise: the
binaries share the server, the repository and the machine's state, and
alternate so that a slow spell hits them alike. Restores are deleted at the
end (WORK must be new or empty: see s3_compare.py on deleting before a run).
"""
import os, shutil, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import s3_compare as s  # noqa: E402


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    dataset, work, rounds, bins = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    if os.path.exists(work) and os.listdir(work):
        sys.exit(f"{work} is not empty: give a new work directory")
    os.makedirs(work, exist_ok=True)
    garage, port = s.start_garage(work)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=s.ACCESS, AWS_SECRET_ACCESS_KEY=s.SECRET,
               AWS_DEFAULT_REGION="us-east-1", ARKIV_PASSWORD=s.PW)
    base = lambda b: [b, "--repo", f"s3://{s.BUCKET}/ab?endpoint=http://127.0.0.1:{port}",
                      "--cache-dir", os.path.join(work, "cache"), "--no-progress"]
    times = {b: [] for b in bins}
    try:
        s.timed(base(bins[0]) + ["init"], env)
        s.timed(base(bins[0]) + ["backup", dataset], env)
        for r in range(rounds):
            for i, b in enumerate(bins):
                target = os.path.join(work, "restores", f"{r}-{i}")
                wall, rss = s.timed(base(b) + ["restore", "latest", "--target", target], env)
                ok = s.same_tree(dataset, s.find_restored(target, dataset))
                times[b].append(wall)
                print(f"round {r} {b}: {wall:.2f} s, {rss:.0f} MB, identical {ok}", flush=True)
    finally:
        garage.kill()
        garage.wait()
        shutil.rmtree(os.path.join(work, "restores"), ignore_errors=True)
    for b in bins:
        print(f"{b}: median {statistics.median(times[b]):.2f} s of {times[b]}")


if __name__ == "__main__":
    main()
