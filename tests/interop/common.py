"""What the newer interop checks share: named results and free ports."""
import json
import socket
import subprocess

results = []


def record(name, ok, why=""):
    results.append((name, ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {why}'}", flush=True)


def check(name, fn):
    """Runs fn; any exception is a failure reported by name."""
    try:
        fn()
        record(name, True)
    except Exception as e:  # noqa: BLE001 — every failure is reported by name
        record(name, False, f"{type(e).__name__}: {e}")


def summary(what):
    """Prints the tally; the exit status (1 when anything failed)."""
    failed = [n for n, ok in results if not ok]
    print(f"{what}: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ffprobe(path):
    """(duration in s, the video stream) as ffprobe reads them, frames counted."""
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "format=duration:stream=codec_type,codec_name,width,height,nb_read_frames", "-of", "json", path],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"ffprobe {path}: {r.stderr.strip()[:300]}")
    j = json.loads(r.stdout)
    return float(j["format"].get("duration", "nan")), [s for s in j["streams"] if s["codec_type"] == "video"][0]
