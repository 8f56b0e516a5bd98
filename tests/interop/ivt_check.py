#!/usr/bin/env python3
"""An independent IVT written from the IVR RPC seed alone (the `websockets`
package from PyPI), run against a real `ivr cloud`. Starts the cloud on a
free port with a temporary data directory, provisions a device through the
API, and checks login, Keepalive, RPC both ways, params errors, events,
offline detection and the disconnect rules. Prints one line per check and a
closing "N passed, N failed" line."""
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
import urllib.request

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

ap = argparse.ArgumentParser()
ap.add_argument("--ivr", required=True)
args = ap.parse_args()

TOKEN = "interop-admin-token"
results = []


def record(name, ok, why=""):
    results.append(ok)
    print(f"{'ok' if ok else 'FAIL'} ivt {name}{'' if ok else ': ' + str(why)}", flush=True)


def check(name, fn):
    try:
        fn()
        record(name, True)
    except Exception as e:  # a failed check must not stop the others
        record(name, False, repr(e))


data = tempfile.mkdtemp(prefix="ivr-ivt-")
cloud = subprocess.Popen([args.ivr, "cloud", "--listen", "127.0.0.1:0", "--data", data, "--keepalive-secs", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, IVR_ADMIN_TOKEN=TOKEN))
line = cloud.stdout.readline()
m = re.search(r"http://(127\.0\.0\.1:\d+)/", line)
if not m:
    print(f"FAIL ivt start: {line!r} {cloud.stderr.read()}")
    sys.exit(1)
HOST = m.group(1)


def api(method, path, body=None):
    req = urllib.request.Request(f"http://{HOST}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def url(code, pw):
    q = urllib.parse.urlencode({"login_code": code, "login_passwd": pw, "hardware_model": "py-ivt", "firmware_model": "1.0"})
    return f"ws://{HOST}/ivc?{q}"


def recv_json(ws, timeout=5):
    return json.loads(ws.recv(timeout=timeout))


try:
    def openapi():
        from openapi_spec_validator import validate
        with urllib.request.urlopen(f"http://{HOST}/api/openapi.json", timeout=10) as r:
            spec = json.loads(r.read())
        validate(spec)  # raises with the offending path if invalid
        assert "/api/v1/devices/{login_code}/rpc/{method}" in spec["paths"]
    check("the OpenAPI document is valid OpenAPI 3", openapi)

    status, dev = api("POST", "/api/v1/devices", {"login_code": "py-1", "login_passwd": "py-password", "name": "Python IVT"})
    record("provision through the API", status == 201 and dev["login_code"] == "py-1", (status, dev))

    def wrong_password():
        try:
            connect(url("py-1", "wrong-password"), open_timeout=5)
        except InvalidStatus as e:
            assert e.response.status_code == 401, e.response.status_code
            return
        raise AssertionError("a wrong password was let in")
    check("wrong password is HTTP 401 before the upgrade", wrong_password)

    ws = connect(url("py-1", "py-password"), open_timeout=5).__enter__()
    seq = [0]

    def request(method, params=None):
        seq[0] += 1
        msg = {"req": method, "seq": seq[0]}
        if params is not None:
            msg["params"] = params
        ws.send(json.dumps(msg))
        reply = recv_json(ws)
        assert reply.get("seq") == seq[0], reply
        return reply

    def keepalive():
        r = request("Keepalive", {"state": 1, "channels": [{"channel": 0, "state": 1}, {"channel": 1, "state": 2, "alarm": 8}]})
        assert r == {"seq": seq[0], "resp": {}}, r
        status, d = api("GET", "/api/v1/devices/py-1")
        assert d["online"] and d["hardware_model"] == "py-ivt", d
        assert [c["state"] for c in d["channels"]] == [1, 2] and d["channels"][1]["alarm"] == 8, d
    check("Keepalive sets online and channel states", keepalive)

    def bad_params():
        r = request("Keepalive", {"state": 9, "channels": []})
        assert r["err"]["code"] == 1 and "params.state" in r["err"]["msg"], r
    check("invalid params are err code 1 naming the field", bad_params)

    def alarm():
        r = request("AlarmNotify", {"channel": 1, "type": 3, "state": "start", "desc": "from python"})
        pic = r["resp"]["pic_upload_url"]
        req = urllib.request.Request(pic, method="POST", data=b"\xff\xd8python\xff\xd9")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204
        _, events = api("GET", "/api/v1/events?type=alarm&login_code=py-1")
        assert events[0]["data"]["desc"] == "from python", events
    check("AlarmNotify stores the alarm and its picture", alarm)

    def cloud_calls_us():
        out = {}
        t = threading.Thread(target=lambda: out.update(r=api("POST", "/api/v1/devices/py-1/rpc/GetPTZPresetList", {"channel": 0})))
        t.start()
        req = recv_json(ws)
        assert req["req"] == "GetPTZPresetList" and req["params"] == {"channel": 0} and req["seq"] == 1, req
        ws.send(json.dumps({"seq": req["seq"], "resp": [{"name": "py preset", "token": "7"}]}))
        t.join(10)
        assert out["r"] == (200, [{"name": "py preset", "token": "7"}]), out
        # Our err comes back as HTTP 502 with its code.
        t = threading.Thread(target=lambda: out.update(r=api("POST", "/api/v1/devices/py-1/rpc/RebootChannel", {"channel": 0})))
        t.start()
        req = recv_json(ws)
        assert req["seq"] == 2, req
        ws.send(json.dumps({"seq": 2, "err": {"code": 1, "msg": "busy"}}))
        t.join(10)
        status, body = out["r"]
        assert status == 502 and body["code"] == 1 and body["msg"] == "busy" and "busy" in body["error"], out
    check("the cloud calls the device (seq from 1, errors relayed)", cloud_calls_us)

    def cli_call():
        # `ivr cloud call`: the method on several devices through the batch
        # API; this IVT answers its part, an unknown device fails alone.
        env = dict(os.environ, IVR_TOKEN=TOKEN)
        cmd = [args.ivr, "cloud", "call", "GetPTZPresetList", '{"channel": 0}', "--url", f"http://{HOST}",
               "--device", "py-1,nobody", "--json"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        req = recv_json(ws, timeout=15)
        assert req["req"] == "GetPTZPresetList" and req["params"] == {"channel": 0}, req
        ws.send(json.dumps({"seq": req["seq"], "resp": [{"name": "from the cli", "token": "9"}]}))
        out, err = p.communicate(timeout=30)
        got = json.loads(out)
        assert p.returncode == 1 and "1 of 2 calls failed" in err, (p.returncode, err)
        assert (got["ok"], got["failed"]) == (1, 1), got
        assert got["results"][0] == {"device": "py-1", "method": "GetPTZPresetList", "status": 200,
                                     "answer": [{"name": "from the cli", "token": "9"}]}, got
        assert got["results"][1]["device"] == "nobody" and got["results"][1]["status"] == 404, got
        # Bad params are refused before anything is sent, naming the field.
        r = subprocess.run([args.ivr, "cloud", "call", "RebootChannel", "{}", "--url", f"http://{HOST}", "--device", "py-1"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode != 0 and "params.channel" in r.stderr, (r.returncode, r.stderr)
        try:
            sent = ws.recv(timeout=0.5)
        except TimeoutError:
            sent = None
        assert sent is None, sent
    check("ivr cloud call runs a method on several devices through the batch API (this IVT answers)", cli_call)

    def events():
        status, _ = api("POST", "/api/v1/devices/py-1/events/SyncTime", {"datetime": "2016-12-05T02:15:32", "offset": 5})
        assert status == 202, status
        ev = recv_json(ws)
        assert ev == {"event": "SyncTime", "params": {"datetime": "2016-12-05T02:15:32", "offset": 5}}, ev
    check("events reach the device", events)

    def rule_5():
        ws.send("{this is not json")
        try:
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 1008, e.rcvd
            assert e.rcvd.reason.startswith("IVR RPC rule 5 (malformed packet)"), e.rcvd.reason
    check("a malformed packet closes the session with rule 5 named", rule_5)

    def offline():
        for _ in range(50):
            _, d = api("GET", "/api/v1/devices/py-1")
            if not d["online"]:
                assert all(c["state"] == 0 for c in d["channels"]), d
                return
            time.sleep(0.1)
        raise AssertionError("still online")
    check("the device is offline after the close", offline)

    def close_reason(w):
        try:
            while True:
                w.recv(timeout=5)
        except ConnectionClosed as e:
            return (e.rcvd.code, e.rcvd.reason) if e.rcvd is not None else (None, "")

    def rule_1():
        w = connect(url("py-1", "py-password"), open_timeout=5).__enter__()
        out = {}
        t = threading.Thread(target=lambda: out.update(r=api("POST", "/api/v1/devices/py-1/rpc/RebootChannel", {"channel": 0})))
        t.start()
        req = recv_json(w)
        w.send(json.dumps({"seq": req["seq"] + 5, "resp": {}}))  # the wrong seq
        code, reason = close_reason(w)
        t.join(10)
        assert code == 1008 and reason.startswith("IVR RPC rule 1"), (code, reason)
        assert out["r"][0] == 409, out  # the API call fails: the session closed
    check("a response with the wrong seq closes the session (rule 1)", rule_1)

    def rule_4():
        w = connect(url("py-1", "py-password"), open_timeout=5).__enter__()
        w.send(json.dumps({"req": "RTMPPublish", "params": {}, "seq": 1}))  # an IVT method, not the cloud's
        code, reason = close_reason(w)
        assert code == 1008 and reason.startswith("IVR RPC rule 4 (unknown method)"), (code, reason)
    check("a request for a method the cloud does not serve closes it (rule 4)", rule_4)

    def silence():
        ws2 = connect(url("py-1", "py-password"), open_timeout=5).__enter__()
        # One Keepalive, then nothing: the cloud must drop us.
        ws2.send(json.dumps({"req": "Keepalive", "params": {"state": 1, "channels": []}, "seq": 1}))
        assert recv_json(ws2)["seq"] == 1
        t0 = time.time()
        try:
            while True:
                ws2.recv(timeout=10)
        except ConnectionClosed:
            pass
        waited = time.time() - t0
        assert 2.5 <= waited <= 8, waited  # three 1 s intervals, checked every second
    check("a silent device is dropped after three missed Keepalives", silence)
finally:
    cloud.kill()

passed = sum(results)
print(f"ivt: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
