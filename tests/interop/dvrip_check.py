"""alexshpilkin's `dvrip` (PyPI `dvrip`, unmodified) library against
`ivr sim dvrip`. Its decoder rejects any key a device would not send, so it
checks the exact shape of our replies."""
import sys
import traceback
from datetime import datetime
from socket import AF_INET, SOCK_STREAM, socket as Socket

from dvrip.io import DVRIPClient
from dvrip.monitor import Stream
from dvrip.search import FileType

host, port, password, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
failures = 0


def check(name, fn):
    global failures
    try:
        fn()
        print(f"ok dvrip {name}", flush=True)
    except Exception as e:
        failures += 1
        print(f"FAIL dvrip {name}: {e!r}", flush=True)
        traceback.print_exc(file=sys.stderr)


conn = DVRIPClient(Socket(AF_INET, SOCK_STREAM))


def login():
    conn.connect((host, port), "admin", password)


def info():
    s = conn.systeminfo()
    assert s.videoin == 1 and s.chassis == "IPC", s
    disks = conn.storageinfo()
    assert disks[0].partinfo[0].current
    a = conn.activityinfo()
    assert a.channels[0].recording


def time():
    t = conn.time()
    assert abs((t - datetime.now()).total_seconds()) < 120, t


def search_and_download():
    files = list(conn.search(start=datetime(2000, 1, 2), end=datetime.now(), channel=0, type=FileType.VIDEO))
    assert len(files) > 128, len(files)  # three pages
    assert len({f.name for f in files}) == len(files), "duplicates across pages"
    f = files[0]
    sock = Socket(AF_INET, SOCK_STREAM)
    sock.connect((host, port))
    reader = conn.download(sock, f.name)
    data = reader.read()
    sock.close()
    assert len(data) > 0 and (len(data) + 1023) // 1024 == f.length, (len(data), f.length)
    open(f"{outdir}/dvrip_download.bin", "wb").write(data)


def monitor():
    sock = Socket(AF_INET, SOCK_STREAM)
    sock.connect((host, port))
    reader = conn.monitor(sock, 0, Stream.SD)
    data = b""
    while len(data) < 200_000:
        chunk = reader.read(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert len(data) >= 200_000, len(data)
    open(f"{outdir}/dvrip_monitor.bin", "wb").write(data)


def logout():
    conn.logout()


for name, fn in [("login", login), ("info", info), ("time", time),
                 ("search_and_download", search_and_download), ("monitor", monitor), ("logout", logout)]:
    check(name, fn)
sys.exit(1 if failures else 0)
