#!/usr/bin/env python3
"""How long `ivr cloud` takes to answer after a start with many stored
segments: the reconcile pass of disk and index (docs/BENCHMARKS.md).

    python3 scripts/bench_reconcile.py target/release/ivr [--old OTHER_IVR]
        [--cams 16 --days 60 --per-day 1000] [--dir /var/tmp/ivr-reconcile]

It makes a data directory with the cloud's own schema (one short start of
the binary), fills it with `cams` x `days` x `per-day` empty segment files
and their index rows, dates every day folder in the past, then times
starts: the default pass (folders changed since the last check), a full
pass (`--reconcile full`), and `--old`'s start on the same data, warm and
with the page cache dropped (root only). Peak RSS from /proc.
"""
import argparse, os, shutil, socket, sqlite3, subprocess, sys, time

PORT = 18999
TOKEN = "x" * 32


def fill(d, cams, days, per):
    db = sqlite3.connect(os.path.join(d, "ivr.sqlite3"))
    root = os.path.join(d, "recordings")
    day0 = 1767225600000  # 2026-01-01
    t, n = time.time(), 0
    for c in range(cams):
        lc, sid = f"cam-{c}", f"sess{c:018d}xxxx"
        db.execute("INSERT OR IGNORE INTO record_session VALUES (?,?,?,?,?,NULL)", (sid, lc, 0, "api", 1))
        rows = []
        for dd in range(days):
            start = day0 + dd * 86400000
            day = time.strftime("%Y-%m-%d", time.gmtime(start / 1000))
            p = os.path.join(root, lc, "0", day)
            os.makedirs(p, exist_ok=True)
            for i in range(per):
                s, seq = start + i * 10000, dd * per + i
                name = f"{s}-10000-{sid}-{seq}.ts"
                open(os.path.join(p, name), "wb").close()
                rows.append((lc, 0, sid, seq, s, 10000, 0, f"{lc}/0/{day}/{name}"))
                n += 1
            old = time.time() - 86400 * (days - dd + 1)
            os.utime(p, (old, old))
        db.executemany("INSERT INTO segment (login_code, channel, session_id, seq, start_ms, duration_ms, bytes, path)"
                       " VALUES (?,?,?,?,?,?,?,?)", rows)
        db.execute("INSERT OR REPLACE INTO segment_total VALUES (?,?,?,?)", (lc, 0, 0, len(rows)))
        db.commit()
        print(f"\r{n} segments", end="", file=sys.stderr, flush=True)
    print(f"\r{n} segments made in {time.time() - t:.1f} s", file=sys.stderr)
    return n


def start(binary, data, extra, cold):
    if cold:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    t = time.time()
    p = subprocess.Popen([binary, "cloud", "--data", data, "--listen", f"127.0.0.1:{PORT}", "--admin-token", TOKEN]
                         + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while True:
        if p.poll() is not None:
            sys.exit(f"{binary} exited: {p.communicate()[0]}")
        try:
            c = socket.create_connection(("127.0.0.1", PORT), timeout=600)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = c.recv(100)
            c.close()
            if got:
                break
        except OSError:
            pass
        time.sleep(0.02)
    secs = time.time() - t
    hwm = open(f"/proc/{p.pid}/status").read().split("VmHWM:")[1].split("\n")[0].strip()
    p.terminate()
    out = p.communicate()[0]
    said = [ln for ln in out.splitlines() if ln.startswith("recordings")]
    return secs, hwm, said


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ivr")
    ap.add_argument("--old", help="another ivr binary to start on the same data")
    ap.add_argument("--cams", type=int, default=16)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--per-day", type=int, default=1000)
    ap.add_argument("--dir", default="/var/tmp/ivr-reconcile")
    a = ap.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    data = os.path.join(a.dir, "data")
    # The schema, as the binary makes it (and its first mark).
    start(a.ivr, data, [], False)
    n = fill(data, a.cams, a.days, a.per_day)
    cold = os.geteuid() == 0
    runs = [("default (changed folders)", a.ivr, []), ("--reconcile full", a.ivr, ["--reconcile", "full"])]
    if a.old:
        runs.append(("--old", a.old, []))
    print(f"{n} segments in {a.cams * a.days} day folders")
    for label, binary, extra in runs:
        for c in ([False, True] if cold else [False]):
            secs, hwm, said = start(binary, data, extra, c)
            print(f"{label:28} {'cold' if c else 'warm'}: answering after {secs:6.2f} s, peak RSS {hwm}")
            for ln in said:
                print("    " + ln)
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
