#!/usr/bin/env python3
"""Python's xmlrpc.client as an independent judge of ivr's CVIPv2.

A client written here from the seed (9-byte header, transaction numbers)
drives `ivr sim cvip`: requests are written by xmlrpc.client.dumps (so ivr
must read Python's XML-RPC), answers are read by xmlrpc.client.loads (so
ivr's writer must be XML-RPC that Python reads). The seed's extra <uint>
type is taught to Python's unmarshaller; nothing else is extended.

Usage: cvip_check.py --ivr target/debug/ivr
"""
import argparse
import base64
import os
import socket
import struct
import subprocess
import sys
import time
import xmlrpc.client

# The seed's <uint>: read like <int>.
xmlrpc.client.Unmarshaller.dispatch["uint"] = xmlrpc.client.Unmarshaller.dispatch["int"]

PASSED = 0
FAILED = []


def check(name, cond, detail=""):
    global PASSED
    if cond:
        PASSED += 1
        print(f"  ok   {name}")
    else:
        FAILED.append(name)
        print(f"  FAIL {name} {detail}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cvip:
    """A CVIPv2 client from the seed: big-endian header, per-connection
    transaction counter, events with transaction 0."""

    def __init__(self, port, little=False):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.txn = 0
        self.little = little
        self.events = []

    def send(self, body, msg_type=0):
        self.txn += 1
        fmt = "<HBHI" if self.little else ">HBHI"
        self.s.sendall(struct.pack(fmt, 0x0201, msg_type, self.txn, 9 + len(body)) + body)
        return self.txn

    def read_packet(self):
        h = self._read(9)
        little = h[:2] == b"\x01\x02"
        ver, mtype, txn, size = struct.unpack("<HBHI" if little else ">HBHI", h)
        assert ver == 0x0201, h
        return little, mtype, txn, self._read(size - 9)

    def _read(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("closed")
            b += c
        return b

    def call(self, method, *params):
        """Returns (params, little-endian answer?) or raises Fault."""
        txn = self.send(xmlrpc.client.dumps(tuple(params), method).encode())
        while True:
            little, _, t, body = self.read_packet()
            if t == 0:
                self.events.append(xmlrpc.client.loads(body.decode()))
                continue
            assert t & 0x8000, "answer without the response bit"
            assert t & 0x7FFF == txn, f"transaction {t & 0x7fff} for {txn}"
            return xmlrpc.client.loads(body.decode())[0], little


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivr", required=True)
    a = ap.parse_args()
    procs = []
    try:
        dev_port, nvr_port, ms_port, common = free_port(), free_port(), free_port(), free_port()
        for role, port, extra in [
            ("device", dev_port, ["--common-port", str(common)]),
            ("nvr", nvr_port, ["--common-port", "0", "--history-hours", "1"]),
            ("master", ms_port, ["--common-port", "0"]),
        ]:
            procs.append(
                subprocess.Popen(
                    [a.ivr, "sim", "cvip", "--listen", f"127.0.0.1:{port}", "--role", role] + extra,
                    stdout=subprocess.DEVNULL,
                )
            )
        deadline = time.time() + 10
        while True:
            try:
                for p in (dev_port, nvr_port, ms_port):
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

        print("device (xmlrpc.client writes the calls and reads the answers)")
        c = Cvip(dev_port)
        (d,), _ = c.call("system.describe")
        check("system.describe is a struct with id and version", d["id"] == "IVR-SIM-ENC" and d["version"])
        (svcs,), _ = c.call("system.listServices")
        check("listServices names the seed's services", {"cvip", "cviUnit", "cviNetwork.1", "cviVideo.01.1", "cviMotionDetection.1"} <= set(svcs))
        (props,), _ = c.call("cviNetwork.1.listProperties")
        ip = [p for p in props if p["id"] == "networkIpAddress"][0]
        check("listProperties gives value, validation, access", ip["validation"] == "regexp" and ip["access"] == "rw")
        (v,), _ = c.call("cviVideo.01.getProperties", ["videoInputBrightness"])
        check("getProperties (array of names)", v == {"videoInputBrightness": 128})
        (ack,), _ = c.call("cviVideo.01.setProperties", {"videoInputBrightness": 200, "videoInputName": "Gate"})
        check("setProperties acknowledged", ack["ErrorCode"] == 0x01000000)
        (v,), _ = c.call("cviVideo.01.getProperties", ["videoInputBrightness", "videoInputName"])
        check("the values were applied", v == {"videoInputBrightness": 200, "videoInputName": "Gate"})
        (ack,), _ = c.call("cviVideo.01.setProperties", {"videoInputBrightness": 300})
        check("a value outside its range fails, saying why", ack["ErrorCode"] == 0x01000001 and "outside" in ack["ErrorString"], ack)
        (ack,), _ = c.call("cviUnit.setProperties", {"unitTemperature": 1})
        check("a read-only property fails", ack["ErrorCode"] == 0x01000001 and "read-only" in ack["ErrorString"], ack)
        try:
            c.call("cviNope.describe")
            check("an unknown service is a fault", False)
        except xmlrpc.client.Fault as f:
            check("an unknown service is a fault with the invalid code", f.faultCode == 0x01000004, f)

        (ack,), _ = c.call("cviPtz.setProperties", {"PtzID": 1, "ProtocolType": 2, "UserPriority": 1})
        check("PTZ pipe set", ack["ErrorCode"] == 0x01000000)
        # The seed's positional cviPTZ.cmd: pan left with speed 9.
        (ack,), _ = c.call("cviPTZ.cmd", "00000001-0000-0000-0001EC901E30B", 1, 15, 0, 1, -9)
        check("cviPTZ.cmd positional, as in the seed", ack["ErrorCode"] == 0x01000000, ack)
        time.sleep(0.5)
        c.call("cviPTZ.cmd", "00000001-0000-0000-0001EC901E30B", 1, 15, 0, 0, 0)
        (pos,), _ = c.call("cviPtz.getProperties")
        check("PTZ position moved left (double values)", isinstance(pos["panPosition"], float) and 300 < pos["panPosition"] < 360, pos)

        (ack,), _ = c.call("cviEvent.subscribe", {"Type": 0x04, "Id": 1})
        check("subscribed to motion", ack["ErrorCode"] == 0x01000000)
        c.call("cviEvent.trigger", {"Type": 0x04, "Id": 1, "info": 1})
        deadline = time.time() + 3
        while not c.events and time.time() < deadline:
            c.s.settimeout(max(0.1, deadline - time.time()))
            try:
                _, _, t, body = c.read_packet()
                if t == 0:
                    c.events.append(xmlrpc.client.loads(body.decode()))
            except socket.timeout:
                break
        ok = bool(c.events) and c.events[0][1] == "cviEvent.notify" and c.events[0][0][0]["Type"] == 4
        check("a cviEvent.notify arrives with transaction 0", ok, c.events)
        if ok:
            n = c.events[0][0][0]
            check("notify carries Id, Time, EventGUID, info", n["Id"] == 1 and len(n["Time"]) == 19 and n["EventGUID"] and n["info"] == 1, n)

        le = Cvip(dev_port, little=True)
        (d,), little = le.call("system.describe")
        check("a little-endian request gets a little-endian answer", little and d["id"] == "IVR-SIM-ENC")

        # Ping over UDP on the common port: 16 bytes out, 37 back.
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(3)
        u.sendto(struct.pack(">HBHI4sHB", 0x0201, 1, 7, 16, bytes([127, 0, 0, 1]), 5555, 0x01), ("127.0.0.1", common))
        r, _ = u.recvfrom(100)
        ver, mt, txn, size = struct.unpack(">HBHI", r[:9])
        port = struct.unpack(">H", r[13:15])[0]
        check("ping on the common port: 37 bytes naming the CVIP port", len(r) == 37 and size == 37 and txn == 0x8007 and port == dev_port, r)

        print("nvr")
        n = Cvip(nvr_port)
        (page,), _ = n.call("cviMedia.query", {"GUID": "py", "Major": 1, "eventType": 4})
        check("media query by event", page["Items"] and all(i["EventType"] & 4 for i in page["Items"]), page)
        check("IsLastPage is a boolean", isinstance(page["IsLastPage"], bool))
        start, end = page["Items"][0]["ClipTime"], page["Items"][0]["EndTime"]
        (pb,), _ = n.call("cviPlayback.create", {"GUID": "py", "Major": 1, "Minor": 1, "StartTime": start, "EndTime": end, "destIp": "127.0.0.1", "destPort": 9, "destTransport": "udp"})
        (ln,), _ = n.call("cviPlayback.getlength", {"GUID": "py", "PlaybackID": pb["PlaybackID"]})
        check("playback of one clip is 1500 frames long", ln["Length"] == 1500, ln)
        n.call("cviPlayback.seek", {"GUID": "py", "PlaybackID": pb["PlaybackID"], "Position": 700})
        (st,), _ = n.call("cviPlayback.getstatus", {"GUID": "py", "PlaybackID": pb["PlaybackID"]})
        check("seek then status", st["Position"] == 700 and st["State"] == 0, st)

        print("media judged by ffprobe/ffmpeg")
        import json as _json
        import tempfile
        tmp = tempfile.mkdtemp(prefix="ivr-cvip-")
        clip = page["Items"][0]
        out = os.path.join(tmp, "clip.h264")
        r = subprocess.run(
            [a.ivr, "cvip", "--host", "127.0.0.1", "--port", str(nvr_port), "--json", "media", "export", str(clip["ClipID"]), "-o", out],
            capture_output=True, text=True, timeout=60,
        )
        check("ivr cvip media export writes the clip", r.returncode == 0 and os.path.getsize(out) == clip["Size"], r.stderr)
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json", out],
            capture_output=True, text=True,
        )
        st = _json.loads(probe.stdout or "{}").get("streams", [{}])[0]
        check("ffprobe: the export is H.264 640x360 with 1500 frames (60 s at 25 fps)",
              st.get("codec_name") == "h264" and st.get("width") == 640 and st.get("height") == 360 and st.get("nb_read_frames") == "1500", st)
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", out, "-f", "null", "-"], capture_output=True, text=True)
        check("ffmpeg decodes the export without an error", dec.returncode == 0 and not dec.stderr.strip(), dec.stderr[:300])

        # A live stream over RTP/UDP, received by ffmpeg through an SDP.
        rtp_port = free_port() & ~1
        sdp = os.path.join(tmp, "live.sdp")
        with open(sdp, "w") as f:
            f.write(f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=ivr\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {rtp_port} RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 packetization-mode=1\n")
        got = os.path.join(tmp, "live.h264")
        ff = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-protocol_whitelist", "file,udp,rtp", "-i", sdp, "-t", "3", "-c", "copy", "-y", got],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)
        (sr,), _ = c.call("cviStream.create", {"GUID": "py", "major": 1, "minor": 2, "destIp": "127.0.0.1", "destPort": rtp_port, "destTransport": "udp"})
        try:
            ff.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ff.kill()
        c.call("cviStream.delete", {"GUID": "py", "StreamID": sr["StreamID"]})
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json", got],
            capture_output=True, text=True,
        )
        st = _json.loads(probe.stdout or "{}").get("streams", [{}])[0]
        frames = int(st.get("nb_read_frames", "0") or 0)
        check("ffmpeg receives the RTP stream: H.264 640x360, about 3 s of frames",
              st.get("codec_name") == "h264" and st.get("width") == 640 and 50 <= frames <= 90, (st, ff.stderr.read()[:300] if ff.stderr else ""))
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", got, "-f", "null", "-"], capture_output=True, text=True)
        check("ffmpeg decodes what it received without an error", dec.returncode == 0 and not dec.stderr.strip(), dec.stderr[:300])

        print("ivr cvip (the command line) against the simulators")

        def ivr(*args, port=dev_port, ok=True):
            r = subprocess.run([a.ivr, "cvip", "--host", "127.0.0.1", "--port", str(port)] + list(args), capture_output=True, text=True, timeout=60)
            return r

        r = subprocess.run([a.ivr, "cvip", "discover", "--target", f"127.0.0.1:{common}", "--wait", "0.5", "--json"], capture_output=True, text=True, timeout=30)
        found = _json.loads(r.stdout or "[]")
        check("ivr cvip discover finds the device on the common port", r.returncode == 0 and found and found[0]["port"] == dev_port, r.stdout + r.stderr)
        r = ivr("--json", "describe")
        d = _json.loads(r.stdout or "{}")
        check("ivr cvip describe --json", r.returncode == 0 and d.get("id") == "IVR-SIM-ENC" and "cviPtz" in d.get("services", []), r.stderr)
        r = ivr("set", "cviNetwork.1", "networkIpAddress=300.1.1.1")
        check("a refused set exits non-zero and names the property and rule", r.returncode != 0 and "networkIpAddress" in r.stderr and "does not match" in r.stderr, r.stderr)
        r = ivr("set", "cviNetwork.1", "networkIpAddress=10.1.2.3")
        r2 = ivr("--json", "get", "cviNetwork.1", "networkIpAddress")
        check("ivr cvip set then get", r.returncode == 0 and _json.loads(r2.stdout or "{}").get("networkIpAddress") == "10.1.2.3", r.stderr + r2.stderr)
        r = ivr("--json", "call", "cviVideo.01.getProperties", '[["videoInputHue"]]')
        check("ivr cvip call with JSON params", r.returncode == 0 and _json.loads(r.stdout or "[{}]")[0].get("videoInputHue") == 0, r.stdout + r.stderr)
        r = ivr("call", "cviVideo.01.getProperties", "[oops")
        check("bad JSON params are named", r.returncode != 0 and "not JSON" in r.stderr, r.stderr)
        r = ivr("--json", "events", "--type", "motion", "--count", "1", "--seconds", "5", "--trigger", "motion", "--channel", "1")
        ev = _json.loads((r.stdout or "{}").splitlines()[0] if r.stdout else "{}")
        check("ivr cvip events --trigger receives the notify", r.returncode == 0 and ev.get("event", {}).get("Type") == 4, r.stdout + r.stderr)
        fw = os.path.join(tmp, "fw-7.7.7.bin")
        with open(fw, "wb") as f:
            f.write(b"version=7.7.7\n" + os.urandom(200000))
        r = ivr("--json", "firmware", fw)
        check("ivr cvip firmware uploads, flashes and reports the new version", r.returncode == 0 and _json.loads(r.stdout or "{}").get("unitFirmwareVersion") == "7.7.7", r.stdout + r.stderr)
        saved = os.path.join(tmp, "saved.h264")
        r = ivr("stream", "save", "--minor", "2", "--seconds", "2", "-o", saved)
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames", "-of", "json", saved], capture_output=True, text=True)
        st = _json.loads(probe.stdout or "{}").get("streams", [{}])[0]
        check("ivr cvip stream save: ffprobe reads about 2 s of H.264", r.returncode == 0 and st.get("codec_name") == "h264" and 30 <= int(st.get("nb_read_frames", 0)) <= 60, (r.stderr, st))
        r = ivr("--json", "login", port=ms_port)
        check("ivr cvip login prints an AppGUID", r.returncode == 0 and len(_json.loads(r.stdout or "{}").get("AppGUID", "")) == 36, r.stderr)
        r = ivr("--password", "wrong", "login", port=ms_port)
        check("a wrong password is refused with the reason", r.returncode != 0 and "wrong password" in r.stderr, r.stderr)
        r = ivr("--json", "users", "add", "carol", "--new-password", "pw", "--privilege", "streaming,playback", port=ms_port)
        uid = _json.loads(r.stdout or "{}").get("UserID")
        r = ivr("--json", "users", "list", port=ms_port)
        users = _json.loads(r.stdout or "[]")
        check("ivr cvip users add/list", any(u["UserID"] == uid and u["UserPrivilege"] == 3 for u in users), r.stdout + r.stderr)
        r = ivr("--user", "carol", "--password", "pw", "entities", "add", "camera", "--name", "x", port=ms_port)
        check("a user without Housekeeping cannot add entities", r.returncode != 0 and "Housekeeping" in r.stderr, r.stderr)

        print("master")
        m = Cvip(ms_port)
        import hashlib
        md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
        (r,), _ = m.call("cviUser.login", {"GUID": "py", "UserName": md5("admin"), "PassWord": md5("nope"), "LoginType": 1})
        check("a wrong password fails", r["ErrorCode"] == 0x01000001)
        (r,), _ = m.call("cviUser.login", {"GUID": "py", "UserName": md5("admin"), "PassWord": md5("admin"), "LoginType": 1})
        app = r.get("AppGUID")
        check("login returns an AppGUID", r["ErrorCode"] == 0x01000000 and app, r)
        (r,), _ = m.call("cviUser.listusers", {"GUID": "py", "AppGUID": "bogus"})
        check("a call without a valid AppGUID fails", r["ErrorCode"] == 0x01000001, r)
        png = bytes(range(256)) * 40
        (r,), _ = m.call("cviEntity.add", {"GUID": "py", "AppGUID": app, "EntityTypeID": 6, "EntityName": "map", "ImageTypeID": 4, "ImageData": xmlrpc.client.Binary(png)})
        check("an image entity with <base64> data", r["ErrorCode"] == 0x01000000, r)
        (lst,), _ = m.call("cviEntity.list", {"GUID": "py", "AppGUID": app, "EntityTypeID": 6})
        img = lst["Items"][0]["ImageData"]
        check("the image comes back as base64, byte-exact", isinstance(img, xmlrpc.client.Binary) and img.data == png)
        (r,), _ = m.call("cviUser.logout", {"GUID": "py", "AppGUID": app})
        (r,), _ = m.call("cviUser.listgroups", {"GUID": "py", "AppGUID": app})
        check("after logout the AppGUID is refused", r["ErrorCode"] == 0x01000001, r)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    print(f"cvip: {PASSED} passed, {len(FAILED)} failed")
    if FAILED:
        print("failed: " + ", ".join(FAILED))
        sys.exit(1)


if __name__ == "__main__":
    main()
