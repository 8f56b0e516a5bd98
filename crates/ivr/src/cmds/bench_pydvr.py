# The python-dvr side of `ivr bench dvrip`: the same scripted session and
# the same live read as the Rust side, timed from login to logout.
import json
import sys
import time

from dvrip import DVRIPCam

host, port, password, gets, frames = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

t0 = time.perf_counter()
c0 = time.process_time()
cam = DVRIPCam(host, user="admin", password=password, port=port)
assert cam.login()
for _ in range(gets):
    assert cam.get_info("General.General")["FontSize"] == 24
cam.get_time()
snap = cam.snapshot()
assert snap[:2] == b"\xff\xd8"
cam.close()
session = time.perf_counter() - t0
session_cpu = time.process_time() - c0

cam = DVRIPCam(host, user="admin", password=password, port=port)
assert cam.login()
count = [0, 0]
t0 = time.perf_counter()
c0 = time.process_time()


def on_frame(frame, meta, user):
    count[0] += 1
    count[1] += len(frame)
    if count[0] >= frames:
        cam.stop_monitor()


cam.start_monitor(on_frame)
live = time.perf_counter() - t0
live_cpu = time.process_time() - c0
cam.close()
print(json.dumps({"session_s": session, "session_cpu_s": session_cpu, "live_s": live, "live_cpu_s": live_cpu,
                  "live_frames": count[0], "live_bytes": count[1]}))
