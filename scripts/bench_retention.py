#!/usr/bin/env python3
"""Retention's queries at months of segments, side by side with the
previous release's.

Makes a store the way `ivr cloud` makes it (it runs the cloud once on an
empty data folder, so the schema is the real one, every migration), fills
its `segment` table with N segments of C cameras (10 s each, oldest
first, as recordings accumulate) and their per-channel totals, then times
what one retention pass over a full disk asks the database, each query
several times (median):

- the quota's total: now a sum over `segment_total` (one row per
  channel); before, `SUM(bytes)` over every segment;
- the oldest 200 segments no hold covers: now a walk of the `start_ms`
  index; before, a scan and a sort of the whole table (no index, no holds).

Prints a table, or `--json`. Python's sqlite3 runs the SQL: the same
engine and file as the cloud's rusqlite (the timings are the database's;
the cloud adds its own call around each).
"""

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

UNHELD = """NOT EXISTS (SELECT 1 FROM record_hold h WHERE h.login_code = segment.login_code
    AND h.channel = segment.channel AND h.from_ms < segment.start_ms + segment.duration_ms
    AND h.to_ms > segment.start_ms)"""

QUERIES = {
    "quota total": (
        "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT), CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM segment_total",
        "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT), COUNT(*) FROM segment",
    ),
    "oldest 200": (
        f"SELECT id FROM segment WHERE {UNHELD} ORDER BY start_ms LIMIT 200",
        "SELECT id FROM segment NOT INDEXED ORDER BY start_ms LIMIT 200",
    ),
}


def make_store(ivr, data):
    """Runs `ivr cloud` until it serves (its migrations ran), then stops it."""
    p = subprocess.Popen([ivr, "cloud", "--listen", "127.0.0.1:0", "--data", data, "--admin-token",
                          "bench-retention-token-0123"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in p.stdout:
            if line.startswith("live view:") or "listening" in line:
                break
        else:
            raise SystemExit("ivr cloud did not start")
    finally:
        p.terminate()
        p.wait()
    return os.path.join(data, "ivr.sqlite3")


def fill(db, n, cameras):
    t0 = 1_700_000_000_000
    start = time.time()
    step = 200_000
    for lo in range(0, n, step):
        rows = ((f"cam-{i % cameras}", 0, f"s{i % cameras}", i // cameras, t0 + (i // cameras) * 10_000, 10_000,
                 5_000_000, f"cam-{i % cameras}/0/{i}.ts") for i in range(lo, min(n, lo + step)))
        db.executemany("INSERT INTO segment (login_code, channel, session_id, seq, start_ms, duration_ms, bytes, path)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        done = min(n, lo + step)
        print(f"\r  {done:,} of {n:,} segments", end="", file=sys.stderr, flush=True)
    db.execute("DELETE FROM segment_total")
    db.execute("INSERT INTO segment_total (login_code, channel, bytes, count)"
               " SELECT login_code, channel, SUM(bytes), COUNT(*) FROM segment GROUP BY login_code, channel")
    db.commit()
    db.execute("ANALYZE")
    print(f" ({time.time() - start:.0f} s)", file=sys.stderr)


def timed(db, sql, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        db.execute(sql).fetchall()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ivr", required=True, help="the ivr binary (makes the store)")
    ap.add_argument("--segments", type=int, default=2_000_000, help="segments in the store (default 2,000,000)")
    ap.add_argument("--cameras", type=int, default=100, help="cameras they belong to (default 100)")
    ap.add_argument("--reps", type=int, default=5, help="runs of each query; the median is shown (default 5)")
    ap.add_argument("--json", action="store_true", help="the results as one JSON object on stdout")
    a = ap.parse_args()
    if a.segments < 1 or a.cameras < 1 or a.reps < 1:
        ap.error("--segments, --cameras and --reps must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ivr-bench-retention-") as data:
        path = make_store(os.path.abspath(a.ivr), data)
        db = sqlite3.connect(path)
        print(f"filling {path}", file=sys.stderr)
        fill(db, a.segments, a.cameras)
        results = {}
        for name, (now_sql, before_sql) in QUERIES.items():
            now = timed(db, now_sql, a.reps)
            before = timed(db, before_sql, a.reps)
            results[name] = {"now_ms": round(now * 1000, 3), "before_ms": round(before * 1000, 3),
                             "speedup": round(before / now, 1) if now > 0 else None}
        db.close()
    if a.json:
        print(json.dumps({"segments": a.segments, "cameras": a.cameras, "results": results}))
        return
    print(f"{a.segments:,} segments of {a.cameras} cameras; median of {a.reps} runs")
    print(f"{'query':<14} {'now':>12} {'before':>12} {'before / now':>13}")
    for name, r in results.items():
        print(f"{name:<14} {r['now_ms']:>9.3f} ms {r['before_ms']:>9.3f} ms {r['speedup']:>12}×")


if __name__ == "__main__":
    main()
