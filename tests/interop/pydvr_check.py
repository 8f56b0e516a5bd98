"""python-dvr (PyPI `python-dvr`, unmodified) against `ivr sim dvrip`.

Run with the python of the venv that has python-dvr. Prints one line per
check ("ok NAME" / "FAIL NAME: why") and writes media for ffprobe to judge.
"""
import json
import sys
import traceback
from datetime import datetime

from dvrip import DVRIPCam  # python-dvr's module

host, port, password, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
failures = 0


def check(name, fn):
    global failures
    try:
        fn()
        print(f"ok pydvr {name}", flush=True)
    except Exception as e:  # a check failing must not stop the others
        failures += 1
        print(f"FAIL pydvr {name}: {e!r}", flush=True)
        traceback.print_exc(file=sys.stderr)


cam = DVRIPCam(host, user="admin", password=password, port=port)


def login():
    assert cam.login(), "login refused"


def bad_password():
    other = DVRIPCam(host, user="admin", password=password + "x", port=port)
    assert not other.login(), "a wrong password logged in"
    other.close()


def system_info():
    info = cam.get_system_info()
    assert info["SerialNo"], info
    assert info["VideoInChannel"] == 1, info


def config():
    general = cam.get_general_info()
    assert general["General"]["MachineName"] == "LocalHost", general
    reply = cam.set_info("General.General", {"MachineName": "FromPython"})
    assert reply["Ret"] == 100, reply
    assert cam.get_info("General.General")["MachineName"] == "FromPython"
    assert cam.get_netcommon()["TCPPort"] == 34567
    assert cam.get_encode_info()[0]["MainFormat"]["Video"]["FPS"] == 25
    assert "AlarmFunction" in cam.get_system_capabilities()


def time():
    t = cam.get_time()
    assert abs((t - datetime.now()).total_seconds()) < 120, t
    target = datetime(2023, 4, 5, 6, 7, 8)
    assert cam.set_time(target)["Ret"] == 100
    got = cam.get_time()
    assert 0 <= (got - target).total_seconds() < 5, got
    cam.set_time()


def ptz():
    assert cam.ptz("DirectionLeft", preset=65535)["Ret"] == 100
    assert cam.ptz("DirectionLeft", preset=-1)["Ret"] == 100
    assert cam.ptz("SetPreset", preset=3)["Ret"] == 100
    assert cam.ptz("GotoPreset", preset=3)["Ret"] == 100


def snapshot():
    jpeg = cam.snapshot()
    assert jpeg[:2] == b"\xff\xd8", jpeg[:8]
    open(f"{outdir}/pydvr_snapshot.jpg", "wb").write(jpeg)


def file_list():
    # python-dvr has no search helper: its raw send, as its users do.
    reply = cam.send(1440, {"Name": "OPFileQuery", "SessionID": "0x%08X" % cam.session,
                            "OPFileQuery": {"BeginTime": "2000-01-01 00:00:00", "EndTime": "2099-01-01 00:00:00",
                                            "Channel": 0, "DriverTypeMask": "0x0000FFFF", "Event": "*",
                                            "StreamType": "0x00000000", "Type": "h264"}})
    assert reply["Ret"] == 111, reply["Ret"]  # more than a page
    files = reply["OPFileQuery"]
    assert len(files) == 64, len(files)
    assert files[0]["FileName"].startswith("/idea0/"), files[0]


def users():
    assert any(u["Name"] == "admin" for u in cam.getUsers())
    assert cam.addUser("pyuser", "pypass", group="user")
    assert any(u["Name"] == "pyuser" for u in cam.getUsers())
    assert cam.delUser("pyuser")
    assert not any(u["Name"] == "pyuser" for u in cam.getUsers())


def live():
    frames = []
    out = open(f"{outdir}/pydvr_live.h264", "wb")

    def on_frame(frame, meta, user):
        if meta.get("frame") in ("I", "P"):
            out.write(frame)
            frames.append(dict(meta))
        if len(frames) >= 50:
            cam.stop_monitor()

    cam.start_monitor(on_frame)
    out.close()
    assert len(frames) == 50, len(frames)
    keys = [f for f in frames if f.get("frame") == "I"]
    assert len(keys) >= 2, "an I-frame every 25 frames"
    assert keys[0]["fps"] == 25
    assert abs((keys[0]["datetime"] - datetime.now()).total_seconds()) < 120


def snapshot_then_live_in_a_thread():
    """The report: login → snapshot() → start_monitor() in a thread gave no
    frames. The device leaves nothing on the connection after a snapshot
    (checked: no stray byte arrives); what blocks is python-dvr's own
    `send(..., wait_response=False)`, which takes its `busy` lock (an RLock)
    and never gives it back, so a monitor thread waits on it forever —
    against a real camera too. Released here, the same connection serves
    live right after the snapshot."""
    import socket
    import threading
    import time
    other = DVRIPCam(host, user="admin", password=password, port=port)
    assert other.login()
    assert other.snapshot()[:2] == b"\xff\xd8"
    other.socket.settimeout(0.5)
    try:
        stray = other.socket.recv(4096, socket.MSG_PEEK)
    except socket.timeout:
        stray = b""
    other.socket.settimeout(other.timeout)
    assert stray == b"", f"the device left {len(stray)} bytes after the snapshot: {stray[:40]!r}"
    other.busy.release()  # python-dvr's leak (see above)
    frames = []

    def on_frame(frame, meta, user):
        if meta.get("frame") in ("I", "P"):
            frames.append(1)
        if len(frames) >= 25:
            other.stop_monitor()

    t = threading.Thread(target=other.start_monitor, args=(on_frame,), daemon=True)
    t.start()
    t.join(15)
    assert len(frames) >= 25, f"{len(frames)} frames in 15 s after a snapshot"
    other.close()


for name, fn in [("login", login), ("bad_password", bad_password), ("system_info", system_info),
                 ("config", config), ("time", time), ("ptz", ptz), ("snapshot", snapshot),
                 ("file_list", file_list), ("users", users), ("live", live),
                 ("snapshot then live in a thread", snapshot_then_live_in_a_thread)]:
    check(name, fn)
cam.close()
sys.exit(1 if failures else 0)
