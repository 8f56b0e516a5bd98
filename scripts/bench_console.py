"""Benchmark of the web console in Debian's Chromium (Playwright), on
loopback, against `ivr cloud` and an `ivr edge` with 16 simulated channels:

  * time from navigation to a playing live tile (first decoded frame), cold
    (a new browser context each time: nothing cached), median of 5;
  * the device list with N devices (default 5,000): time to first render,
    and the frame times while scrolling it to the end;
  * Chromium's CPU (all its processes, from /proc) while a 16-tile grid of
    sub-streams plays, per core;
  * page weight: the console's JS + CSS as the browser received it;
  * `--transcode`: the CPU of one ffmpeg re-encoding a 2592×1944 main
    stream to a 720-line H.264 rendition while a tile plays it.

Usage: bench_console.py --ivr target/release/ivr [--devices 5000] [--secs 20] [--json]
(run with a Python that has playwright: ~/.cache/ivr/venvs/browser)."""
import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright


def proc_cpu(pids):
    """CPU seconds (user + system) of these processes and their children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total


def pids_named(part):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if part in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def chromium_pids():
    return pids_named("chrom")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivr", required=True)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--secs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ivr = os.path.abspath(a.ivr)
    token = "console-bench-token-01234"
    data = tempfile.mkdtemp(prefix="ivr-console-bench-")
    procs = []
    res = {}
    try:
        cloud = subprocess.Popen([ivr, "cloud", "--listen", "127.0.0.1:0", "--data", data, "--keepalive-secs", "5",
                                  "--rtmp-listen", "127.0.0.1:0", "--argon2", "m=256,t=1,p=1", "--transcode", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=dict(os.environ, IVR_ADMIN_TOKEN=token))
        procs.append(cloud)
        host = re.search(r"http://(127\.0\.0\.1:\d+)/", cloud.stdout.readline()).group(1)
        base = f"http://{host}"

        def api(method, path, body=None):
            req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return json.loads(raw) if raw else None

        subprocess.run([ivr, "cloud", "users", "add", "bench", "--role", "admin", "--password-stdin", "--data", data],
                       input="bench-password\n", text=True, check=True, capture_output=True)
        api("POST", "/api/v1/devices", {"login_code": "site-16", "login_passwd": "bench-password", "name": "16 cameras"})
        conf = os.path.join(data, "edge.toml")
        with open(conf, "w") as f:
            f.write(f'[cloud]\nurl = "ws://{host}/ivc"\nlogin_code = "site-16"\nlogin_passwd = "bench-password"\n')
            for c in range(16):
                f.write(f'\n[[channels]]\nchannel = {c}\nsource = "sim"\npreview_every_secs = 0\n')
        procs.append(subprocess.Popen([ivr, "edge", "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        t0 = time.time()
        for i in range(a.devices - 1):
            api("POST", "/api/v1/devices", {"login_code": f"cam-{i:05d}", "login_passwd": "bench-password",
                                            "name": f"Camera {i}"})
        print(f"provisioned {a.devices} devices in {time.time() - t0:.1f} s", file=sys.stderr)
        for _ in range(100):
            if api("GET", "/api/v1/devices/site-16")["online"]:
                break
            time.sleep(0.1)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--autoplay-policy=no-user-gesture-required"])

            def logged_in():
                ctx = browser.new_context(viewport={"width": 1280, "height": 860})
                page = ctx.new_page()
                page.goto(base + "/login")
                page.fill("input[name=name]", "bench")
                page.fill("input[name=password]", "bench-password")
                page.click("button[type=submit]")
                page.wait_for_url(base + "/")
                return ctx, page

            # Time to a playing tile, cold: a new context (empty cache) per run.
            tiles = []
            weight = []
            for i in range(5):
                ctx, page = logged_in()
                got = []
                page.on("response", lambda r: got.append(r) if "/ui/" in r.url else None)
                # A channel nobody watches yet: the device is asked to publish.
                page.goto(f"{base}/devices/site-16/channels/{i}")
                ms = page.evaluate("""() => new Promise((ok, fail) => {
                    const t = setInterval(() => {
                        const v = document.querySelector('#player video');
                        if (v && v.getVideoPlaybackQuality().totalVideoFrames > 0) { clearInterval(t); ok(performance.now()); }
                    }, 10);
                    setTimeout(() => fail('no frame in 20 s'), 20000);
                })""")
                tiles.append(ms)
                if i == 0:
                    weight = [r.url.rsplit("/", 1)[1] for r in got]
                ctx.close()
            res["tile_ms"] = {"median": statistics.median(tiles), "min": min(tiles), "max": max(tiles), "runs": tiles}
            # What the browser fetched under /ui/, sized from the files the binary embeds.
            files = [os.path.join("web", n) for n in set(weight) if os.path.exists(os.path.join("web", n))]
            raw = sum(os.path.getsize(f) for f in files)
            zipped = sum(len(gzip.compress(open(f, "rb").read(), 9)) for f in files)
            weight = files
            res["page_weight"] = {"files": len(weight), "bytes": raw, "gzip_bytes": zipped}

            # The device list.
            ctx, page = logged_in()
            page.goto(base + "/devices")
            page.wait_for_selector("body[data-ready='1']", timeout=60000)
            first = page.evaluate("() => performance.now()")
            rows = page.evaluate("() => document.querySelectorAll('li[data-code]').length")
            frames = page.evaluate("""() => new Promise(ok => {
                const times = []; let last = performance.now();
                const step = () => {
                    const now = performance.now(); times.push(now - last); last = now;
                    window.scrollBy(0, 600);
                    if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 2) ok(times);
                    else requestAnimationFrame(step);
                };
                requestAnimationFrame(step);
            })""")
            frames.sort()
            res["device_list"] = {"devices": rows, "first_render_ms": first, "scroll_frames": len(frames),
                                  "frame_ms_p50": frames[len(frames) // 2], "frame_ms_p99": frames[int(len(frames) * 0.99)],
                                  "frame_ms_max": frames[-1]}
            page.goto(base + "/devices?q=")
            page.wait_for_selector("body[data-ready='1']", timeout=60000)
            t = page.evaluate("""() => { const s = document.querySelector('input[type=search]'); const t0 = performance.now();
                s.value = 'camera 4999'; s.dispatchEvent(new Event('input')); return performance.now() - t0; }""")
            res["device_list"]["search_ms"] = t
            ctx.close()

            # A 16-tile grid: Chromium's CPU.
            ctx, page = logged_in()
            picks = [{"lc": "site-16", "ch": c} for c in range(16)]
            page.goto(base + "/live")
            page.evaluate(f"() => localStorage.setItem('ivr.grid', JSON.stringify({{n: 16, picks: {json.dumps(picks)}}}))")
            page.goto(base + "/live")
            page.wait_for_function("""() => [...document.querySelectorAll('[data-tile] video')]
                .filter(v => v.getVideoPlaybackQuality().totalVideoFrames > 0).length === 16""", timeout=60000)
            pids = chromium_pids()
            c0, w0 = proc_cpu(pids), time.time()
            f0 = page.evaluate("() => [...document.querySelectorAll('[data-tile] video')].map(v => v.getVideoPlaybackQuality().totalVideoFrames)")
            time.sleep(a.secs)
            c1, w1 = proc_cpu(pids), time.time()
            f1 = page.evaluate("() => [...document.querySelectorAll('[data-tile] video')].map(v => v.getVideoPlaybackQuality().totalVideoFrames)")
            dropped = page.evaluate("() => [...document.querySelectorAll('[data-tile] video')].reduce((s, v) => s + v.getVideoPlaybackQuality().droppedVideoFrames, 0)")
            fps = sum(b - a for a, b in zip(f0, f1)) / (w1 - w0)
            res["grid16"] = {"chromium_cpu_cores": (c1 - c0) / (w1 - w0), "decoded_fps_all_tiles": fps,
                             "dropped_frames": dropped, "secs": a.secs}
            ctx.close()

            # One H.264 rendition: the transcoder's CPU while a tile plays it.
            ctx, page = logged_in()
            page.goto(base + "/live")
            page.evaluate("() => localStorage.setItem('ivr.grid', JSON.stringify({n: 1, picks: []}))")
            page.goto(base + "/devices/site-16/channels/15")
            page.wait_for_selector("#player video")
            page.evaluate("""() => { const b = document.querySelector('#player'); b.ivrPlayer.close(); }""")
            page.evaluate("""async () => { const m = await import('/ui/player.js');
                new m.LivePlayer(document.querySelector('#player'), 'site-16', 15, 'h264'); }""")
            page.wait_for_function("""() => { const v = document.querySelector('#player video');
                return v && v.getVideoPlaybackQuality().totalVideoFrames > 25; }""", timeout=60000)
            ff = pids_named("ffmpeg")
            c0, w0 = proc_cpu(ff), time.time()
            q0 = page.evaluate("() => document.querySelector('#player video').getVideoPlaybackQuality().totalVideoFrames")
            time.sleep(a.secs)
            c1, w1 = proc_cpu(ff), time.time()
            q1 = page.evaluate("() => document.querySelector('#player video').getVideoPlaybackQuality().totalVideoFrames")
            info = page.inner_text("#player .tile-info")
            res["transcode"] = {"ffmpeg_cpu_cores": (c1 - c0) / (w1 - w0), "fps": (q1 - q0) / (w1 - w0),
                                "rendition": info, "processes": len(ff), "secs": a.secs}
            ctx.close()
            browser.close()
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"page weight: {res['page_weight']['files']} files, {res['page_weight']['bytes']} bytes, "
              f"{res['page_weight']['gzip_bytes']} gzip")
        print(f"navigation to a playing live tile (cold): median {res['tile_ms']['median']:.0f} ms "
              f"(min {res['tile_ms']['min']:.0f}, max {res['tile_ms']['max']:.0f})")
        d = res["device_list"]
        print(f"device list: {d['devices']} devices, first render {d['first_render_ms']:.0f} ms after navigation; "
              f"scrolling {d['scroll_frames']} frames, p50 {d['frame_ms_p50']:.1f} ms, p99 {d['frame_ms_p99']:.1f} ms, "
              f"max {d['frame_ms_max']:.1f} ms; search {d['search_ms']:.1f} ms")
        g = res["grid16"]
        x = res["transcode"]
        print(f"--transcode: one rendition ({x['rendition']}) at {x['fps']:.1f} frames/s costs ffmpeg "
              f"{x['ffmpeg_cpu_cores'] * 100:.0f} % of a core")
        print(f"16-tile grid: Chromium {g['chromium_cpu_cores'] * 100:.0f} % of a core, {g['decoded_fps_all_tiles']:.0f} "
              f"frames/s decoded in all, {g['dropped_frames']} dropped, over {g['secs']} s")


if __name__ == "__main__":
    main()
