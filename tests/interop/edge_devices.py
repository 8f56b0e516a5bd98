"""Interop: `ivr cloud`, `ivr edge` and simulated devices as separate
processes over loopback, with the edge's channels on `dvrip://` (a 4-channel
H.264 NVR and an H.265 camera) and `cvip://` (a device and an NVR):
devices online with their channel count, RTMPPublish through nginx-rtmp
judged by ffprobe, StartCloudRecord segments judged by ffprobe (keyframe
first, durations, no gap), PTZ and motion settings read back from the
devices with `ivr dvrip` / `ivr cvip`, an alarm with its JPEG in the cloud's
event list, and devices killed/restarted and rebooted coming back by
themselves. Called by run.py (which runs nginx)."""
import http.server
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Segments:
    """The recording callback protocol (docs/ivr-rpc.md): POST cbk → {url},
    PUT the segment there."""

    def __init__(self):
        self.announced, self.stored = [], []
        me = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):
                desc = json.loads(self.body())
                me.announced.append(desc)
                ans = json.dumps({"url": f"http://127.0.0.1:{me.port}/up/{len(me.announced) - 1}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(ans)))
                self.end_headers()
                self.wfile.write(ans)

            def do_PUT(self):
                i = int(self.path.rsplit("/", 1)[1])
                me.stored.append((me.announced[i], self.body()))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def check(ivr, record, judge, play_rtmp, rtmp_base, out):
    procs = []

    def start(args, pattern):
        p = subprocess.Popen([ivr, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(p)
        line = p.stdout.readline()
        m = re.search(pattern, line)
        if not m:
            raise RuntimeError(f"{args[:2]} did not start: {line!r}")
        return p, m

    def dvrip_sim(port, *extra):
        return start(["sim", "dvrip", "--listen", f"127.0.0.1:{port}", "--discovery", "off", "--password", "nvr-pw",
                      "--reboot-secs", "2", *extra], r"listening on 127\.0\.0\.1:(\d+)")[0]

    token = "devices-admin-token-0123"
    data = tempfile.mkdtemp(prefix="ivr-cloud-dev-")
    try:
        nvr_port, cam_port = free_port(), free_port()
        nvr = dvrip_sim(nvr_port, "--channels", "4")
        dvrip_sim(cam_port, "--codec", "h265")
        _, m = start(["sim", "cvip", "--listen", "127.0.0.1:0", "--common-port", "0"], r"listening on 127\.0\.0\.1:(\d+)")
        cvip_dev = int(m.group(1))
        _, m = start(["sim", "cvip", "--listen", "127.0.0.1:0", "--common-port", "0", "--role", "nvr", "--channels", "2"],
                     r"listening on 127\.0\.0\.1:(\d+)")
        cvip_nvr = int(m.group(1))
        cloud = subprocess.Popen([ivr, "cloud", "--listen", "127.0.0.1:0", "--data", data, "--keepalive-secs", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=dict(os.environ, IVR_ADMIN_TOKEN=token))
        procs.append(cloud)
        host = re.search(r"http://(127\.0\.0\.1:\d+)/", cloud.stdout.readline()).group(1)

        def api(method, path, body=None):
            req = urllib.request.Request(f"http://{host}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        def channels():
            status, body = api("GET", "/api/v1/devices/site-devices")
            return {c["channel"]: c["state"] for c in json.loads(body).get("channels", [])} if status == 200 else {}

        def wait_states(name, want, secs, which=None):
            got = {}
            for _ in range(secs * 10):
                got = channels()
                if got and all(want(got.get(c, -1)) for c in (which or got.keys())):
                    record(name, True)
                    return True
                time.sleep(0.1)
            record(name, False, f"channel states {got}")
            return False

        api("POST", "/api/v1/devices", {"login_code": "site-devices", "login_passwd": "devices-pass-1234", "name": "Device site"})
        conf = os.path.join(data, "edge.toml")
        sources = [f"dvrip://admin:nvr-pw@127.0.0.1:{nvr_port}/{c}" for c in range(4)]
        sources += [f"dvrip://admin@127.0.0.1:{cam_port}/0", f"cvip://127.0.0.1:{cvip_dev}/1",
                    f"cvip://127.0.0.1:{cvip_nvr}/2?stream=extra"]
        with open(conf, "w") as f:
            f.write(f'[cloud]\nurl = "ws://{host}/ivc"\nlogin_code = "site-devices"\nlogin_passwd = "devices-pass-1234"\n'
                    f'keepalive_secs = 1\n')
            for i, s in enumerate(sources):
                f.write(f'\n[[channels]]\nchannel = {i}\nsource = "{s}"\npreview_every_secs = 0\n')
                if i == 4:
                    f.write('password_env = "IVR_INTEROP_CAM_PW"\n')
        edge = subprocess.Popen([ivr, "edge", "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, IVR_INTEROP_CAM_PW="nvr-pw", RUST_LOG="warn"))
        procs.append(edge)
        if not wait_states("dvrip:// and cvip:// channels come online through the cloud (7 channels)",
                           lambda s: s >= 1, 30):
            return
        record("the cloud sees 7 channels", len(channels()) == 7, f"{channels()}")

        def rpc(method, params):
            return api("POST", f"/api/v1/devices/site-devices/rpc/{method}", params)

        def event(name, params):
            return api("POST", f"/api/v1/devices/site-devices/events/{name}", params)

        # RTMPPublish: DVRIP NVR channel 1, sub-stream (sd) → nginx → ffmpeg.
        url = f"{rtmp_base}/dvrip1"
        status, body = rpc("RTMPPublish", {"channel": 1, "quality": "sd", "url": url, "stream_id": "d1", "max_bitrate": 0})
        record("RTMPPublish of a DVRIP NVR channel", status == 200, f"{status} {body[:300]}")
        play_rtmp("ffmpeg plays the DVRIP channel from nginx", url, f"{out}/edge_dvrip.flv")
        judge("ffprobe the DVRIP channel's publication", f"{out}/edge_dvrip.flv", "h264", 640, 360, 40)
        time.sleep(1.5)
        record("a publishing channel is live (state 2)", channels().get(1) == 2, f"{channels()}")
        rpc("RTMPStopPublish", {"channel": 1, "stream_id": "d1"})
        status, body = rpc("RTMPPublish", {"channel": 0, "quality": "hd", "url": url, "stream_id": "d0", "max_bitrate": 100000})
        record("max_bitrate below the camera's measured rate is error 11",
               status == 502 and b'"code":11' in body.replace(b" ", b""), f"{status} {body[:300]}")

        # RTMPPublish: CVIP device input 1, sub-stream via ld.
        url = f"{rtmp_base}/cvip1"
        status, body = rpc("RTMPPublish", {"channel": 5, "quality": "ld", "url": url, "stream_id": "c1", "max_bitrate": 0})
        record("RTMPPublish of a CVIP unit's input", status == 200, f"{status} {body[:300]}")
        play_rtmp("ffmpeg plays the CVIP channel from nginx", url, f"{out}/edge_cvip.flv")
        judge("ffprobe the CVIP channel's publication", f"{out}/edge_cvip.flv", "h264", 640, 360, 40)
        rpc("RTMPStopPublish", {"channel": 5, "stream_id": "c1"})

        # StartCloudRecord: the H.265 camera and the CVIP NVR's input 2.
        for ch, codec in [(4, "hevc"), (6, "h264")]:
            seg = Segments()
            sess = f"interop-record-sess-{ch:02}"
            status, body = rpc("StartCloudRecord", {
                "session_id": sess, "channel": ch, "quality": "hd", "max_bitrate": 0, "seg_duration": 2,
                "seg_max_size": 8 << 20, "seg_max_count": 10, "prerecord_seconds": 0, "start_ts": 0,
                "cbk_url": f"http://127.0.0.1:{seg.port}/cbk"})
            record(f"StartCloudRecord on channel {ch}", status == 200, f"{status} {body[:300]}")
            time.sleep(6)
            rpc("StopCloudRecord", {"session_id": sess, "channel": ch})
            for _ in range(50):
                if sum(d["duration"] for d, _ in seg.stored) >= 5:
                    break
                time.sleep(0.1)
            seg.httpd.shutdown()
            ok, why = len(seg.stored) >= 2, f"{len(seg.stored)} segments"
            prev_end = None
            for i, (desc, ts) in enumerate(seg.stored):
                p = f"{out}/rec_{ch}_{i}.ts"
                with open(p, "wb") as f:
                    f.write(ts)
                r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                    "stream=codec_name:frame=key_frame,pts_time", "-show_frames", "-of", "json", p],
                                   capture_output=True, text=True)
                j = json.loads(r.stdout or "{}")
                frames = j.get("frames", [])
                if r.returncode != 0 or j["streams"][0]["codec_name"] != codec or not frames or frames[0]["key_frame"] != 1:
                    ok, why = False, f"segment {i}: {r.stderr[:200]} {j.get('streams')} first frame {frames[:1]}"
                    break
                dur = len(frames) / 25
                if desc["seq"] != i or abs(dur - desc["duration"]) > 0.1 or desc["size"] != len(ts):
                    ok, why = False, f"segment {i}: {desc} but {len(frames)} frames, {len(ts)} bytes"
                    break
                t0 = desc["start_ts"]
                if prev_end is not None and abs(t0 - prev_end) > 1.01:
                    ok, why = False, f"segment {i} starts at {t0}, the one before ended at {prev_end}"
                    break
                prev_end = t0 + desc["duration"]
            record(f"ffprobe every recorded segment of channel {ch} ({codec}: keyframe first, durations, no gap)", ok, why)

        # PTZ through the cloud moves the NVR's channel 2 (the device's log says so).
        event("CtrlPTZ", {"channel": 2, "op": "left", "value": 60})
        time.sleep(0.5)
        event("CtrlPTZ", {"channel": 2, "op": "stop"})
        time.sleep(0.5)
        dv = [ivr, "dvrip", "--host", "127.0.0.1", "--port", str(nvr_port), "--password", "nvr-pw"]
        r = subprocess.run(dv + ["logs", "--json"], capture_output=True, text=True, timeout=60)
        logs = r.stdout
        record("CtrlPTZ reaches the DVRIP NVR's channel 2", "DirectionLeft channel 2 step 5" in logs
               and "DirectionLeft channel 2 stop" in logs, r.stderr[:300] + logs[-400:])
        event("CtrlPTZ", {"channel": 5, "op": "right", "value": 100})
        time.sleep(0.6)
        event("CtrlPTZ", {"channel": 5, "op": "stop"})
        r = subprocess.run([ivr, "cvip", "--host", "127.0.0.1", "--port", str(cvip_dev), "--json", "get", "cviPtz",
                            "panPosition"], capture_output=True, text=True, timeout=60)
        try:
            pan = float(json.loads(r.stdout)["panPosition"])
        except Exception:
            pan = 0
        record("CtrlPTZ moves the CVIP unit (panPosition read back)", pan > 5, r.stdout[:300] + r.stderr[:300])

        # Motion settings through the cloud, read back from the device.
        status, body = rpc("AlarmMoveDetectConfig", {"channel": 3, "enable": True, "sensitivity": 100, "delay": 7,
                                                     "start": 0, "end": 86400})
        r = subprocess.run(dv + ["config", "get", "Detect.MotionDetect.[3]", "--json"], capture_output=True, text=True,
                           timeout=60)
        try:
            md = json.loads(r.stdout)
        except Exception:
            md = {}
        record("AlarmMoveDetectConfig lands in Detect.MotionDetect.[3]", status == 200 and md.get("Level") == 6
               and md.get("EventHandler", {}).get("EventLatch") == 7, f"{status} {body[:200]} {r.stdout[:300]}")
        status, body = rpc("GetPTZPresetList", {"channel": 5})
        record("a method CVIP cannot do is an error naming the unit", status == 502 and b"CVIP unit" in body,
               f"{status} {body[:300]}")

        # An alarm on the NVR (a network alarm input raised with ivr dvrip) → an event with its JPEG.
        r = subprocess.run(dv + ["alarms", "--trigger", "--count", "1"], capture_output=True, text=True, timeout=60)
        got, pic_ok = None, False
        for _ in range(100):
            status, body = api("GET", "/api/v1/events?login_code=site-devices&type=alarm&limit=20")
            for e in (json.loads(body) if status == 200 else []):
                if e.get("kind") == "alarm" and e.get("data", {}).get("state") == "start":
                    got = e
                    st, jpeg = api("GET", f"/api/v1/events/{e['id']}/picture")
                    pic_ok = pic_ok or (st == 200 and jpeg[:2] == b"\xff\xd8")
            if pic_ok:
                break
            time.sleep(0.1)
        record("a DVRIP alarm reaches the cloud's event list with the channel's JPEG", pic_ok, f"{got} {r.stderr[:200]}")

        # The NVR process is killed: its channels go offline; restarted, back by themselves.
        nvr.kill()
        nvr.wait()
        wait_states("a killed DVRIP NVR's channels go offline", lambda s: s == 0, 15, which=[0, 1, 2, 3])
        dvrip_sim(nvr_port, "--channels", "4")
        wait_states("restarted, they come back online with no operator action", lambda s: s >= 1, 60,
                    which=[0, 1, 2, 3])
        # RebootChannel: the H.265 camera goes offline and comes back.
        status, body = rpc("RebootChannel", {"channel": 4})
        record("RebootChannel on a DVRIP camera", status == 200, f"{status} {body[:200]}")
        wait_states("the rebooting camera's channel goes offline", lambda s: s == 0, 10, which=[4])
        wait_states("and returns by itself", lambda s: s >= 1, 60, which=[4])
    except Exception as e:
        record("cloud → edge → dvrip:// and cvip:// devices", False, repr(e))
    finally:
        for p in procs:
            p.kill()


def discover_check(ivr, record):
    """`ivr edge discover` finds a 4-channel DVRIP NVR (search on its
    discovery port) and a 3-input CVIP NVR (ping) and writes 7 channels."""
    procs = []
    try:
        d = subprocess.Popen([ivr, "sim", "dvrip", "--listen", "127.0.0.1:0", "--discovery", "127.0.0.1:0",
                              "--channels", "4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(d)
        disc = re.search(r"discovery on udp (127\.0\.0\.1:\d+)", d.stdout.readline()).group(1)
        c = subprocess.Popen([ivr, "sim", "cvip", "--listen", "127.0.0.1:0", "--common-port", "0", "--role", "nvr",
                              "--channels", "3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(c)
        cv = re.search(r"listening on (127\.0\.0\.1:\d+)", c.stdout.readline()).group(1)
        path = os.path.join(tempfile.mkdtemp(prefix="ivr-discover-"), "edge.toml")
        r = subprocess.run([ivr, "edge", "discover", "--dvrip-target", disc, "--cvip-target", cv, "--wait", "1",
                            "--json", "--write", path, "--password-env", "NVR_PW"],
                           capture_output=True, text=True, timeout=60)
        found = json.loads(r.stdout or "[]")
        kinds = sorted((f["protocol"], f["channels"]) for f in found)
        text = open(path).read() if os.path.exists(path) else ""
        record("ivr edge discover finds a DVRIP NVR and a CVIP NVR with their channels",
               kinds == [("cvip", 3), ("dvrip", 4)], f"{found} {r.stderr[:300]}")
        record("ivr edge discover --write adds a [[channels]] table per channel (7)",
               text.count("[[channels]]") == 7 and text.count('password_env = "NVR_PW"') == 4, text[:400])
    except Exception as e:
        record("ivr edge discover", False, repr(e))
    finally:
        for p in procs:
            p.kill()
