"""Interop: live view through the cloud, every piece a separate process over
loopback — `ivr cloud --rtmp-listen`, `ivr edge` (a simulated H.264 channel
and an H.265 DVRIP camera from `ivr sim dvrip`), and independent judges:
ffmpeg/ffprobe read the `mp4` and `hls` URLs, Python's `websockets` reads the
`ws` stream (its bytes judged by ffprobe), ffmpeg as a publisher with a wrong
stream key is refused, a fake device (websockets) that accepts RTMPPublish
and never sends is an error the API returns and the event list shows, and
Debian's Chromium driven by Playwright plays the `ws` stream through MSE on
the cloud's player page. Counts RTMPPublish at the edge (its log) to show
that viewers share one device stream, and RTMPStopPublish after the last
viewer left.

Usage: live_check.py --ivr target/debug/ivr [--out DIR]
(run with a Python that has playwright and websockets)."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from common import check, ffprobe, summary
from websockets.sync.client import connect


def grab(url, dst, secs=3):
    """ffmpeg reads `secs` seconds of a live URL into an MP4 (stream copy)."""
    r = subprocess.run(["ffmpeg", "-v", "error", "-y", "-rw_timeout", "15000000", "-t", str(secs), "-i", url,
                        "-c", "copy", dst], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"ffmpeg {url}: {r.stderr.strip()[:300]}")
    return ffprobe(dst)[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivr", required=True)
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="ivr-live-"))
    a = ap.parse_args()
    ivr, out = os.path.abspath(a.ivr), a.out
    os.makedirs(out, exist_ok=True)
    procs = []
    token = "live-admin-token-0123456"
    data = tempfile.mkdtemp(prefix="ivr-cloud-live-")
    edge_log = os.path.join(out, "edge.log")
    try:
        sim = subprocess.Popen([ivr, "sim", "dvrip", "--listen", "127.0.0.1:0", "--discovery", "off", "--password", "cam-pw",
                                "--codec", "h265"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(sim)
        sim_port = re.search(r"listening on 127\.0\.0\.1:(\d+)", sim.stdout.readline()).group(1)
        cloud = subprocess.Popen([ivr, "cloud", "--listen", "127.0.0.1:0", "--data", data, "--keepalive-secs", "1",
                                  "--rtmp-listen", "127.0.0.1:0", "--live-grace-secs", "3"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=dict(os.environ, IVR_ADMIN_TOKEN=token))
        procs.append(cloud)
        host = re.search(r"http://(127\.0\.0\.1:\d+)/", cloud.stdout.readline()).group(1)
        rtmp_line = cloud.stdout.readline()
        rtmp_base = re.search(r"(rtmp://\S+/live)", rtmp_line).group(1)

        def api(method, path, body=None, raw=False):
            req = urllib.request.Request(path if path.startswith("http") else f"http://{host}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    b = r.read()
                    return r.status, (b if raw else json.loads(b or b"null"))
            except urllib.error.HTTPError as e:
                b = e.read()
                return e.code, (b if raw else json.loads(b or b"null"))

        status, _ = api("POST", "/api/v1/devices", {"login_code": "site-live", "login_passwd": "site-live-pw"})
        assert status == 201, status
        cfg = os.path.join(out, "edge.toml")
        with open(cfg, "w") as f:
            f.write(f'[cloud]\nurl = "ws://{host}/ivc"\nlogin_code = "site-live"\nlogin_passwd = "site-live-pw"\n'
                    f'keepalive_secs = 1\n\n[[channels]]\nchannel = 0\nsource = "sim"\n\n'
                    f'[[channels]]\nchannel = 1\nsource = "dvrip://admin:cam-pw@127.0.0.1:{sim_port}/0"\n')
        log = open(edge_log, "w")
        edge = subprocess.Popen([ivr, "--log", "info", "edge", "--config", cfg], stdout=log, stderr=log,
                                env=dict(os.environ, NO_COLOR="1"))
        procs.append(edge)

        def edge_requests(method):
            with open(edge_log) as f:
                text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
            return len(re.findall(rf"request from the cloud method={method} channel=Some\(0\)|"
                                  rf"request from the cloud method={method} channel=0", text))

        def online():
            for _ in range(100):
                s, d = api("GET", "/api/v1/devices/site-live")
                if s == 200 and d["online"] and len(d["channels"]) == 2 and all(c["state"] >= 1 for c in d["channels"]):
                    return
                time.sleep(0.2)
            raise AssertionError(f"device not online with two channels: {d}")
        check("the edge's device is online with an H.264 and an H.265 channel", online)

        live = {}

        def post_live():
            t0 = time.time()
            s, j = api("POST", "/api/v1/devices/site-live/channels/0/live", {"quality": "hd"})
            assert s == 200, (s, j)
            assert j["codec"].startswith("avc1."), j
            assert isinstance(j["width"], int) and isinstance(j["height"], int) and j["width"] > 0, j
            assert j["audio"] is None or j["audio"] == "mp4a.40.2", j
            assert set(j["urls"]) >= {"ws", "mp4", "hls"}, j
            assert j["expires"] > time.time(), j
            live.update(j, took=time.time() - t0)
        check("POST …/live answers codec, size, audio, the ws/mp4/hls URLs and their expiry", post_live)

        def errors():
            s, j = api("POST", "/api/v1/devices/site-live/channels/7/live")
            assert s == 404 and "no channel 7" in j["error"], (s, j)
            s, j = api("POST", "/api/v1/devices/nobody/channels/0/live")
            assert s == 404 and "nobody" in j["error"], (s, j)
            s, j = api("POST", "/api/v1/devices/site-live/channels/0/live", {"quality": "8k"})
            assert s == 400 and "quality" in j["error"], (s, j)
            req = urllib.request.Request(f"http://{host}/api/v1/devices/site-live/channels/0/live", method="POST")
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError("no admin token was let in")
            except urllib.error.HTTPError as e:
                assert e.code == 401, e.code
            bad = live["urls"]["mp4"].replace("/live/", "/live/00", 1)
            s, j = api("GET", bad)
            assert s == 401 and "token" in j["error"], (s, j)
        check("unknown channel/device 404, bad quality 400, no admin token 401, a forged viewer token 401", errors)

        def mp4():
            # 6 s: longer than the grace period, so the viewer must hold the stream up.
            got = {}
            t = threading.Thread(target=lambda: got.update(v=grab(live["urls"]["mp4"], os.path.join(out, "live.mp4"), 6)))
            t.start()
            time.sleep(4.5)
            _, st = api("GET", "/api/v1/stats")
            t.join(60)
            assert st["live"]["viewers"] >= 1 and st["live"]["channels"] == 1, st
            assert edge_requests("RTMPStopPublish") == 0, "stopped while a viewer watched"
            v = got["v"]
            assert v["codec_name"] == "h264" and (v["width"], v["height"]) == (live["width"], live["height"]), v
            assert int(v["nb_read_frames"]) >= 100, v
        check("the live mp4 URL: ffmpeg reads H.264 of the announced size for 6 s, counted as a viewer throughout", mp4)

        def hls():
            v = grab(live["urls"]["hls"], os.path.join(out, "live-hls.mp4"))
            assert v["codec_name"] == "h264" and int(v["nb_read_frames"]) >= 25, v
        check("the live hls URL: ffmpeg reads an fMP4 HLS window", hls)

        def ws_stream(secs, into):
            with connect(live["urls"]["ws"], open_timeout=10, max_size=None) as w:
                hello = json.loads(w.recv(timeout=10))
                into["hello"] = hello
                chunks = []
                end = time.time() + secs
                while time.time() < end:
                    m = w.recv(timeout=10)
                    assert isinstance(m, bytes), m
                    chunks.append(m)
                into["chunks"] = chunks

        def ws():
            got = {}
            ws_stream(3, got)
            assert got["hello"]["codec"] == live["codec"] and got["hello"]["mime"].startswith("video/mp4"), got["hello"]
            assert got["chunks"][0][4:8] == b"ftyp", got["chunks"][0][:16]
            path = os.path.join(out, "live-ws.mp4")
            with open(path, "wb") as f:
                f.write(b"".join(got["chunks"]))
            v = ffprobe(path)[1]
            assert v["codec_name"] == "h264" and int(v["nb_read_frames"]) >= 25, v
        check("the live ws URL: JSON, init segment, fragments; ffprobe decodes what Python's websockets got", ws)

        def shared():
            before = edge_requests("RTMPPublish")
            both = [{}, {}]
            ts = [threading.Thread(target=ws_stream, args=(3, both[i])) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert all(len(b.get("chunks", [])) > 20 for b in both), [len(b.get("chunks", [])) for b in both]
            assert edge_requests("RTMPPublish") == before == 1, (before, edge_requests("RTMPPublish"))
        check("viewers on every protocol share one RTMPPublish (counted at the edge)", shared)

        def browser():
            from playwright.sync_api import sync_playwright
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium",
                                      args=["--autoplay-policy=no-user-gesture-required"])
                try:
                    pg = b.new_page(viewport={"width": 960, "height": 600})
                    pg.goto(live["urls"]["player"])
                    pg.wait_for_function("window.ivrStats && window.ivrStats.currentTime > 1", timeout=20000)
                    t1 = pg.evaluate("document.querySelector('video').currentTime")
                    time.sleep(1.5)
                    st = pg.evaluate("({t: document.querySelector('video').currentTime,"
                                     " decoded: document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames,"
                                     " error: window.ivrStats.error})")
                    pg.screenshot(path=os.path.join(out, "player.png"))
                    assert st["error"] is None, st
                    assert st["t"] > t1 + 0.5 and st["decoded"] > 10, (t1, st)
                finally:
                    b.close()
        check("Chromium (Playwright) plays the ws stream through MSE: currentTime advances, frames decoded", browser)

        def stops():
            for _ in range(300):
                if edge_requests("RTMPStopPublish") >= 1:
                    break
                time.sleep(0.1)
            assert edge_requests("RTMPStopPublish") == 1, edge_requests("RTMPStopPublish")
            _, ev = api("GET", "/api/v1/events?login_code=site-live&type=live_stop")
            assert ev and ev[0]["channel"] == 0, ev
            _, st = api("GET", "/api/v1/stats")
            assert st["live"]["channels"] in (0, 1), st
        check("the last viewer gone: RTMPStopPublish after the grace period (at the edge), a live_stop event", stops)

        def h265():
            s, j = api("POST", "/api/v1/devices/site-live/channels/1/live")
            assert s == 200 and j["codec"].startswith("hvc1."), (s, j)
            v = grab(j["urls"]["mp4"], os.path.join(out, "live-h265.mp4"))
            assert v["codec_name"] == "hevc" and (v["width"], v["height"]) == (j["width"], j["height"]), v
            assert int(v["nb_read_frames"]) >= 10, v
        check("H.265 (a DVRIP camera through the edge): hvc1, ffprobe decodes the mp4 URL", h265)

        def wrong_key():
            r = subprocess.run(["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10",
                                "-t", "2", "-c:v", "libx264", "-f", "flv", f"{rtmp_base}/not-a-key"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0, "ffmpeg published with a made-up key"
            _, st = api("GET", "/api/v1/stats")
            assert st["live"]["publishes_refused"] >= 1, st
        check("ffmpeg publishing with a stream key the cloud did not make is refused", wrong_key)

        def never_arrives():
            status, _ = api("POST", "/api/v1/devices", {"login_code": "liar", "login_passwd": "liar-password"})
            assert status == 201
            q = urllib.parse.urlencode({"login_code": "liar", "login_passwd": "liar-password",
                                        "hardware_model": "py", "firmware_model": "1"})
            with connect(f"ws://{host}/ivc?{q}", open_timeout=5) as w:
                alive = threading.Event()

                def keepalives():
                    n = 1000
                    while not alive.is_set():
                        n += 1
                        w.send(json.dumps({"req": "Keepalive", "seq": n,
                                           "params": {"state": 1, "channels": [{"channel": 0, "state": 1}]}}))
                        alive.wait(0.5)
                threading.Thread(target=keepalives, daemon=True).start()

                def next_request():
                    while True:
                        m = json.loads(w.recv(timeout=15))
                        if "req" in m:
                            return m
                time.sleep(1)
                res = {}
                t = threading.Thread(target=lambda: res.update(r=api("POST", "/api/v1/devices/liar/channels/0/live")))
                t.start()
                req = next_request()
                assert req["req"] == "RTMPPublish" and req["params"]["url"].startswith(rtmp_base), req
                w.send(json.dumps({"seq": req["seq"], "resp": {}}))
                t.join(30)
                s, j = res["r"]
                assert s == 504 and "no video arrived" in j["error"], (s, j)
                stop = next_request()
                assert stop["req"] == "RTMPStopPublish", stop
                w.send(json.dumps({"seq": stop["seq"], "resp": {}}))
                alive.set()
            _, ev = api("GET", "/api/v1/events?login_code=liar&type=live_failed")
            assert ev and "no video" in ev[0]["data"]["error"], ev
        check("a publish that never arrives: 504 from the API, RTMPStopPublish, a live_failed event", never_arrives)

        print(f"first POST …/live took {live.get('took', 0) * 1000:.0f} ms (device not yet publishing)")
    finally:
        for p in procs:
            p.kill()
    sys.exit(summary("live"))


if __name__ == "__main__":
    main()
