"""Interop: cloud recording end to end, every piece a separate process over
loopback — `ivr cloud` and `ivr edge` (simulated channels) — judged by
ffprobe/ffmpeg: a continuous record policy stores segments; the
recordings list shows one span; the playback MP4 of a range lasts the range
(within one GOP) and decodes clean, the HLS VOD playlist likewise; the edge
killed and restarted leaves a gap and the policy restarts the recording by
itself; `kill -9` of the cloud while segments are uploading, then a
restart: the index and the disk agree, planted half-written and orphan
files are repaired and reported, every span plays, and the segments the
edge buffered meanwhile arrive (no gap); an alarm policy records around an
alarm; an upload for a session the cloud never asked for is refused;
retention under a small byte quota deletes the oldest first, except what a
hold keeps.

Usage: record_check.py --ivr target/debug/ivr"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from common import check, ffprobe, free_port, summary


def decodes_clean(path):
    r = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), f"ffmpeg decoding {path}: {r.stderr.strip()[:300]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivr", required=True)
    a = ap.parse_args()
    ivr = os.path.abspath(a.ivr)
    out = tempfile.mkdtemp(prefix="ivr-rec-")
    data = os.path.join(out, "data")
    token = "rec-admin-token-01234567"
    port = free_port()
    host = f"127.0.0.1:{port}"
    procs = {}

    def start_cloud(*extra):
        p = subprocess.Popen([ivr, "cloud", "--listen", host, "--data", data, "--keepalive-secs", "1", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, IVR_ADMIN_TOKEN=token))
        procs["cloud"] = p
        lines = []
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"ivr cloud did not start: {lines}")
            lines.append(line)
            if line.startswith("live view:"):
                return lines

    def start_edge():
        cfg = os.path.join(out, "edge.toml")
        with open(cfg, "w") as f:
            f.write(f'[cloud]\nurl = "ws://{host}/ivc"\nlogin_code = "site-rec"\nlogin_passwd = "site-rec-pw"\n'
                    f'keepalive_secs = 1\n\n[[channels]]\nchannel = 0\nsource = "sim"\n\n'
                    f'[[channels]]\nchannel = 1\nsource = "sim"\nalarm_every_secs = 8\n')
        procs["edge"] = subprocess.Popen([ivr, "edge", "--config", cfg], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def api(method, path, body=None):
        req = urllib.request.Request(path if path.startswith("http") else f"http://{host}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                b = r.read()
                return r.status, json.loads(b or b"null")
        except urllib.error.HTTPError as e:
            b = e.read()
            return e.code, json.loads(b or b"null")

    def fetch(url, dst):
        with urllib.request.urlopen(url, timeout=60) as r, open(dst, "wb") as f:
            f.write(r.read())

    def spans(ch=0):
        s, j = api("GET", f"/api/v1/devices/site-rec/channels/{ch}/recordings?from=0")
        assert s == 200, (s, j)
        return j

    def wait_for(what, cond, secs):
        end = time.time() + secs
        last = None
        while time.time() < end:
            last = cond()
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {secs} s (last: {last})")

    try:
        start_cloud()
        s, _ = api("POST", "/api/v1/devices", {"login_code": "site-rec", "login_passwd": "site-rec-pw"})
        assert s == 201, s
        start_edge()
        wait_for("device online", lambda: api("GET", "/api/v1/devices/site-rec")[1].get("online")
                 and len(api("GET", "/api/v1/devices/site-rec")[1]["channels"]) == 2, 30)

        def policy():
            s, j = api("PUT", "/api/v1/devices/site-rec/channels/0/record-policy",
                       {"mode": "continuous", "seg_duration": 2, "retention_days": 30})
            assert s == 200 and j["mode"] == "continuous", (s, j)
            s, j = api("PUT", "/api/v1/devices/site-rec/channels/0/record-policy", {"mode": "sometimes"})
            assert s == 400 and "sometimes" in j["error"], (s, j)
            s, j = api("PUT", "/api/v1/devices/site-rec/channels/9/record-policy", {"mode": "continuous"})
            assert s == 404, (s, j)
            s, j = api("PUT", "/api/v1/devices/site-rec/channels/0/record-policy",
                       {"mode": "continuous", "timezone": "Mars/Olympus_Mons"})
            assert s == 400 and "timezone" in j["error"] and "Mars/Olympus_Mons" in j["error"], (s, j)
            s, j = api("GET", "/api/v1/devices/site-rec/channels/0/record-policy")
            assert s == 200 and j.get("retention_days") == 30 and "timezone" not in j, ("refused, so unchanged", s, j)
            j = wait_for("a span of 8 s", lambda: (lambda r: r if r["spans"] and
                                                   r["spans"][0]["to"] - r["spans"][0]["from"] >= 8 else None)(spans()), 40)
            assert len(j["spans"]) == 1 and j["gaps"] == [], j
        check("a continuous policy stores segments; the list shows one span", policy)

        def playback():
            sp = spans()["spans"][0]
            frm, to = sp["from"] + 1.3, sp["from"] + 6.3
            s, j = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": frm, "to": to})
            assert s == 200, (s, j)
            mp4 = os.path.join(out, "range.mp4")
            fetch(j["urls"]["mp4"], mp4)
            dur, v = ffprobe(mp4)
            assert v["codec_name"] == "h264" and abs(dur - 5.0) <= 1.1, (dur, v)
            decodes_clean(mp4)
            dur, v = ffprobe(j["urls"]["hls"])
            assert v["codec_name"] == "h264" and 5.0 <= dur <= 9.0, (dur, v)
            s, j = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": 1000, "to": 2000})
            assert s == 404, (s, j)
            s, j = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": "soon", "to": 2000})
            assert s == 400 and "from" in j["error"], (s, j)
        check("playback: the MP4 of a 5 s range lasts 5 s (within a GOP) and decodes clean; HLS VOD plays", playback)

        def ranges():
            sp = spans()["spans"][0]
            s, j = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": sp["from"], "to": sp["from"] + 6})
            url = j["urls"]["mp4"]
            with urllib.request.urlopen(url, timeout=60) as r:
                whole = r.read()
                assert r.headers["Accept-Ranges"] == "bytes", dict(r.headers)
            n = len(whole)

            def get(rng):
                req = urllib.request.Request(url, headers={"Range": rng})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        return r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.headers, e.read()
            cut = n // 3
            s1, h1, a = get(f"bytes=0-{cut - 1}")
            s2, h2, b = get(f"bytes={cut}-")
            assert (s1, s2) == (206, 206), (s1, s2)
            assert h1["Content-Range"] == f"bytes 0-{cut - 1}/{n}" and int(h1["Content-Length"]) == cut, h1
            assert h2["Content-Range"] == f"bytes {cut}-{n - 1}/{n}", h2
            assert a + b == whole, "two ranges are not the whole file"
            # Ranges starting anywhere (the assembly resumes at the segment
            # before them) give exactly those bytes of the whole file.
            for k in range(1, 8):
                lo = n * k // 8
                hi = min(n - 1, lo + 150_000)
                s5, _, part = get(f"bytes={lo}-{hi}")
                assert s5 == 206 and part == whole[lo:hi + 1], (k, s5, len(part))
            s3, _, tail = get("bytes=-100")
            assert s3 == 206 and tail == whole[-100:], s3
            s4, h4, _ = get(f"bytes={n}-")
            assert s4 == 416 and h4["Content-Range"] == f"bytes */{n}", (s4, h4)
            # ffmpeg seeks in it over HTTP (Range requests) and decodes from there.
            r = subprocess.run(["ffmpeg", "-v", "error", "-ss", "3", "-i", url, "-f", "null", "-"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and not r.stderr.strip(), r.stderr[:300]
        check("playback MP4: Range requests give the exact bytes (206, Content-Range, 416 past the end); ffmpeg seeks in it", ranges)

        def refused():
            req = urllib.request.Request(f"http://{host}/record/not-a-session-of-ours", method="POST",
                                         data=json.dumps({"session_id": "not-a-session-of-ours", "channel": 0, "seq": 0,
                                                          "start_ts": int(time.time()), "duration": 2.0, "size": 10}).encode())
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError("an upload for an unknown session was let in")
            except urllib.error.HTTPError as e:
                assert e.code == 403 and b"did not ask" in e.read(), e.code
        check("an upload for a session the cloud did not ask for is refused (403)", refused)

        def gap():
            procs["edge"].kill()
            procs["edge"].wait()
            time.sleep(5)
            start_edge()
            j = wait_for("a second span after the edge came back", lambda: (lambda r: r if len(r["spans"]) >= 2 and
                         r["spans"][-1]["to"] - r["spans"][-1]["from"] >= 4 else None)(spans()), 60)
            assert len(j["gaps"]) == len(j["spans"]) - 1 >= 1, j
            g = j["gaps"][-1]
            assert g["to"] - g["from"] >= 3, g
        check("the edge killed and back: a gap, and the policy restarts the recording by itself", gap)

        def crash():
            before = spans()
            n_before = before["segments"]
            procs["cloud"].send_signal(signal.SIGKILL)
            procs["cloud"].wait()
            killed_at = time.time()
            # A half-written file and a file of no session, as a crash could leave.
            day_dir = os.path.join(data, "recordings", "site-rec", "0", "2020-01-01")
            os.makedirs(day_dir, exist_ok=True)
            open(os.path.join(day_dir, "1577836800000-2000-zzzzzzzzzzzzzzzzzzzzzz-0.ts.part"), "wb").write(b"x" * 100)
            open(os.path.join(day_dir, "1577836800000-2000-zzzzzzzzzzzzzzzzzzzzzz-1.ts"), "wb").write(b"y" * 100)
            time.sleep(6)
            lines = start_cloud()
            repaired = [ln for ln in lines if ln.startswith("recordings repaired")]
            assert repaired and "2 file(s) removed" in repaired[0], lines
            # The edge's buffered segments arrive: the time the cloud was down is covered.
            j = wait_for("the buffered segments", lambda: (lambda r: r if r["spans"][-1]["to"] > killed_at + 8 else None)(spans()), 60)
            assert len(j["spans"]) == len(before["spans"]), (before, j)
            assert j["segments"] > n_before, (n_before, j)
            files = [f for d, _, fs in os.walk(os.path.join(data, "recordings")) for f in fs]
            assert len(files) == j["segments"] and all(f.endswith(".ts") for f in files), (len(files), j["segments"])
            for i, sp in enumerate(j["spans"]):
                s, pb = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": sp["from"], "to": sp["to"]})
                assert s == 200, (s, pb)
                path = os.path.join(out, f"span{i}.mp4")
                fetch(pb["urls"]["mp4"], path)
                dur, _ = ffprobe(path)
                assert abs(dur - (sp["to"] - sp["from"])) <= 1.5, (dur, sp)
                decodes_clean(path)
        check("kill -9 of the cloud while uploading, then restart: repaired and reported, index = disk, "
              "every span plays, nothing lost", crash)

        def alarm():
            s, j = api("PUT", "/api/v1/devices/site-rec/channels/1/record-policy",
                       {"mode": "alarm", "post_seconds": 2, "prerecord_seconds": 2, "seg_duration": 2})
            assert s == 200, (s, j)

            def started():
                _, ev = api("GET", "/api/v1/events?login_code=site-rec&channel=1&type=record_start")
                return [e for e in ev if e["data"].get("reason") == "alarm"]
            wait_for("an alarm recording", started, 30)

            def stopped():
                _, ev = api("GET", "/api/v1/events?login_code=site-rec&channel=1&type=record_stop")
                return ev
            wait_for("the alarm recording's end", stopped, 30)
            wait_for("its segments", lambda: spans(1)["spans"], 30)
        check("an alarm policy records around an alarm and stops post_seconds after it", alarm)

        def retention():
            _, st = api("GET", "/api/v1/stats")
            total = st["recordings"]["stored_bytes"]
            oldest = spans()["spans"][0]["from"]
            # A hold over the first seconds: evidence the quota must not take.
            s, hold = api("POST", "/api/v1/devices/site-rec/channels/0/holds",
                          {"from": oldest + 0.5, "to": oldest + 3.5, "note": "incident 9"})
            assert s == 201 and hold["segments"] >= 1 and hold["bytes"] > 0, (s, hold)
            procs["cloud"].terminate()
            procs["cloud"].wait()
            quota = 3 << 20
            start_cloud("--recordings-max-bytes", str(quota))

            def swept():
                _, st = api("GET", "/api/v1/stats")
                return st if st["recordings"]["deleted"] > 0 else None
            st = wait_for("the sweeper", swept, 30)
            files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(data, "recordings")) for f in fs]
            size = sum(os.path.getsize(f) for f in files)
            assert size <= quota + hold["bytes"] + (2 << 20), (size, quota, hold["bytes"], total)
            j = spans()
            assert j["spans"][0]["from"] == oldest and j["spans"][0]["to"] <= oldest + 10, \
                ("the held range is the first span left", oldest, j["spans"][:3])
            assert len(j["spans"]) >= 2 and j["spans"][1]["from"] > j["spans"][0]["to"] + 1, \
                ("what followed the held range was deleted", j["spans"][:3])
            assert [k["note"] for k in j["holds"]] == ["incident 9"], j["holds"]
            s, pb = api("POST", "/api/v1/devices/site-rec/channels/0/playback", {"from": oldest, "to": oldest + 4})
            assert s == 200, (s, pb)
            kept = os.path.join(out, "held.mp4")
            fetch(pb["urls"]["mp4"], kept)
            dur, v = ffprobe(kept)
            assert v["codec_name"] == "h264" and dur >= 1.5, (dur, v)
            decodes_clean(kept)
            # Released: the next sweep takes it, oldest first as before.
            s, r = api("DELETE", f"/api/v1/devices/site-rec/channels/0/holds/{hold['id']}")
            assert s == 200, (s, r)
            wait_for("the released range deleted", lambda: spans()["spans"][0]["from"] > oldest, 30)
        check("retention under a small byte quota deletes the oldest first, except a held range, which still "
              "plays, until it is released", retention)
    finally:
        for p in procs.values():
            p.kill()
    sys.exit(summary("record"))


if __name__ == "__main__":
    main()
