#!/usr/bin/env python3
"""Turns compare.py JSON results into the ratio tables of docs/benchmarks.md.

    bench/report.py bench/results/A.json [B.json ...]

For each file: the raw table (wall seconds and peak RSS MB per step), then
arkiv's ratio to each peer per step, and the issue's targets checked.
"""
import json, sys

STEPS = ["backup_cold", "backup_unchanged", "backup_1pct_changed", "restore", "check_read_data"]
# Targets from the issue, as ratios of arkiv's wall time to the peer's.
TARGETS = {("backup_cold", "restic"): 0.5, ("backup_cold", "rustic"): 0.8, ("backup_unchanged", "restic"): 0.5,
           ("backup_1pct_changed", "restic"): 0.5, ("restore", "restic"): 0.5, ("check_read_data", "restic"): 0.7}


def table(path):
    rows = {r["tool"]: r for r in json.load(open(path))}
    out = [f"Source: `{path}`", "", "| tool | " + " | ".join(STEPS) + " | repo MB |", "|---" * (len(STEPS) + 2) + "|"]
    for tool, r in rows.items():
        cells = [f"{r[s]['wall_s']} s ({r[s]['rss_mb']:.0f} MB)" if s in r else "-" for s in STEPS]
        out.append(f"| {tool} | " + " | ".join(cells) + f" | {r['repo_mb']} |")
    a = rows.get("arkiv")
    if a:
        out += ["", "arkiv / peer (wall time; peak RSS):", "", "| peer | " + " | ".join(STEPS) + " | repo size |",
                "|---" * (len(STEPS) + 2) + "|"]
        for tool, r in rows.items():
            if tool == "arkiv":
                continue
            cells = []
            for s in STEPS:
                t = a[s]["wall_s"] / r[s]["wall_s"]
                m = a[s]["rss_mb"] / r[s]["rss_mb"]
                goal = TARGETS.get((s, tool))
                mark = "" if goal is None else (" ✓" if t <= goal else f" ✗ (goal {goal})")
                mem = "" if tool != "restic" else (" ✓" if m <= 1 else " ✗")
                cells.append(f"{t:.2f}×{mark}; {m:.2f}×{mem}")
            size = a["repo_mb"] / r["repo_mb"]
            cells.append(f"{size:.3f}×" + (" ✓" if tool == "restic" and size <= 1.05 else ""))
            out.append(f"| {tool} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
