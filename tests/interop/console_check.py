"""The web console in a real browser: Debian's Chromium driven by Playwright,
against `ivr cloud` and two `ivr edge` sites as separate processes over
loopback (simulated channels, a CVIP camera for PTZ, a DVRIP camera whose
main stream is H.265 and sub-stream H.264).

Checked as a person would see it: a wrong password shows an error and is
audited; the admin sees every device; a live channel plays (currentTime
advances, decoded frames > 0) and so does a 4-tile grid; a PTZ press moves
the CVIP camera (its panPosition read back with `ivr cvip`); the timeline
shows a recorded span and a click plays it back; the events page shows an
alarm picture; the H.265 channel says Chromium cannot decode it and plays
the H.264 sub-stream; a viewer assigned one device sees only that one, has
no PTZ buttons, and gets 404 for another device's live URL and pictures
and none of its events on the SSE stream; a revoked token stops working at
once; a device named `<img src=x onerror=alert(1)>` renders as text.
Screenshots of every page go to the --out folder, for a person to look at.

Usage: console_check.py --ivr target/debug/ivr [--out DIR]
(run with a Python that has playwright)."""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from common import check, summary
from playwright.sync_api import sync_playwright

XSS = "<img src=x onerror=alert(1)>"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivr", required=True)
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="ivr-console-"))
    a = ap.parse_args()
    ivr, out = os.path.abspath(a.ivr), os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    print(f"screenshots in {out}", flush=True)
    procs = []
    token = "console-admin-token-0123"
    data = tempfile.mkdtemp(prefix="ivr-console-data-")

    def start(args, pattern, **kw):
        p = subprocess.Popen([ivr, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
        procs.append(p)
        line = p.stdout.readline()
        m = re.search(pattern, line)
        if not m:
            raise RuntimeError(f"{args[:2]} did not start: {line!r}")
        return m

    try:
        cam265 = start(["sim", "dvrip", "--listen", "127.0.0.1:0", "--discovery", "off", "--password", "cam-pw",
                        "--codec", "h265", "--sub-codec", "h264"], r"listening on 127\.0\.0\.1:(\d+)").group(1)
        ptz_cam = start(["sim", "cvip", "--listen", "127.0.0.1:0", "--common-port", "0"],
                        r"listening on 127\.0\.0\.1:(\d+)").group(1)
        host = start(["cloud", "--listen", "127.0.0.1:0", "--data", data, "--keepalive-secs", "1",
                      "--rtmp-listen", "127.0.0.1:0", "--live-grace-secs", "3", "--argon2", "m=1024,t=1,p=1",
                      "--transcode", "1"],
                     r"http://(127\.0\.0\.1:\d+)/", env=dict(os.environ, IVR_ADMIN_TOKEN=token)).group(1)
        base = f"http://{host}"

        def api(method, path, body=None, bearer=token):
            req = urllib.request.Request(base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    raw = r.read()
                    return r.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    return e.code, json.loads(raw)
                except ValueError:
                    return e.code, raw

        # The first admin, as an operator would make it: the CLI, password on stdin.
        r = subprocess.run([ivr, "cloud", "users", "add", "root", "--role", "admin", "--password-stdin", "--data", data],
                           input="root-password-1\n", capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ivr cloud users add: {r.stderr}")
        for lc, name in [("site-1", "Main gate"), ("site-2", "Back yard"), ("xss-1", XSS)]:
            api("POST", "/api/v1/devices", {"login_code": lc, "login_passwd": "site-password-1", "name": name})
        confs = {
            "site-1": "".join(f'\n[[channels]]\nchannel = {c}\nsource = "sim"\nalarm_every_secs = 4\npreview_every_secs = 3\n'
                              for c in range(2))
            + f'\n[[channels]]\nchannel = 2\nsource = "cvip://127.0.0.1:{ptz_cam}/1"\npreview_every_secs = 0\n'
            + f'\n[[channels]]\nchannel = 3\nsource = "dvrip://admin:cam-pw@127.0.0.1:{cam265}/0"\npreview_every_secs = 0\n',
            "site-2": '\n[[channels]]\nchannel = 0\nsource = "sim"\nalarm_every_secs = 3\npreview_every_secs = 3\n',
        }
        for lc, chans in confs.items():
            path = os.path.join(data, f"{lc}.toml")
            with open(path, "w") as f:
                f.write(f'[cloud]\nurl = "ws://{host}/ivc"\nlogin_code = "{lc}"\nlogin_passwd = "site-password-1"\n'
                        f'keepalive_secs = 1\n{chans}')
            procs.append(subprocess.Popen([ivr, "edge", "--config", path], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        for _ in range(300):
            s1 = api("GET", "/api/v1/devices/site-1")[1]
            s2 = api("GET", "/api/v1/devices/site-2")[1]
            if s1["online"] and s2["online"] and len(s1["channels"]) == 4 and all(c["state"] >= 1 for c in s1["channels"]):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the sites did not come online: {s1} {s2}")
        # Something for the timeline: channel 0 recorded continuously.
        api("PUT", "/api/v1/devices/site-1/channels/0/record-policy", {"mode": "continuous", "seg_duration": 2})
        rec_started = time.time()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--autoplay-policy=no-user-gesture-required"])
            run_checks(browser, base, api, token, ivr, ptz_cam, cam265, out, rec_started)
            browser.close()
    except Exception as e:  # noqa: BLE001 — reported as a failure by name
        check("the console's setup (sims, cloud, edges)", lambda: (_ for _ in ()).throw(e))
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
    return summary("console (Chromium + Playwright)")


def run_checks(browser, base, api, token, ivr, ptz_cam, cam265, out, rec_started):
    dialogs = []

    def new_page(viewport=None, timezone=None):
        ctx = browser.new_context(viewport=viewport or {"width": 1280, "height": 860}, locale="en-US",
                                  timezone_id=timezone)
        page = ctx.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        return page

    def shot(page, name):
        page.screenshot(path=os.path.join(out, f"{name}.png"), full_page=True)

    def ready(page, path):
        page.goto(base + path)
        page.wait_for_selector("body[data-ready='1']", timeout=20000)

    def login(page, name, password):
        ready(page, "/login")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")

    def plays(page, sel, secs=20):
        """Frames decoded and time advancing in the player inside `sel`."""
        js = f"""() => {{ const b = document.querySelector({json.dumps(sel)});
                 const v = b && b.querySelector('video'); if (!v) return null;
                 const q = v.getVideoPlaybackQuality(); return [v.currentTime, q.totalVideoFrames]; }}"""
        deadline = time.time() + secs
        first = None
        while time.time() < deadline:
            got = page.evaluate(js)
            if got and got[1] > 0:
                if first is None:
                    first = got
                elif got[0] > first[0] + 0.5:
                    return got
            time.sleep(0.25)
        note = page.evaluate(f"() => (document.querySelector({json.dumps(sel)}) || {{}}).innerText")
        raise AssertionError(f"{sel} did not play: first {first}, tile says {note!r}")

    def ten_minutes(page):
        """The timeline zoomed to ten minutes across and drawn: its last recorded span's box.
        (Waiting for any span would find the hour's, which the zoom then replaces.)"""
        page.click("button[data-level='3']")
        sel = ".tl-bar[data-level='3'] .tl-span"
        page.wait_for_selector(sel, timeout=15000)
        box = page.locator(sel).last.bounding_box()
        assert box, page.inner_text(".timeline")
        return box

    admin = new_page()

    def wrong_password():
        login(admin, "root", "not-the-password")
        admin.wait_for_selector("form.login .error:not([hidden])", timeout=10000)
        text = admin.inner_text("form.login .error")
        assert "Wrong name or password" in text, text
        shot(admin, "01-login-wrong-password")
        status, log = api("GET", "/api/v1/audit")
        assert log[0]["action"] == "login_failed" and log[0]["target"] == "root", log[:2]
    check("a wrong password shows an error and is audited", wrong_password)

    def admin_sees_all():
        login(admin, "root", "root-password-1")
        admin.wait_for_url(base + "/", timeout=10000)
        admin.wait_for_selector("body[data-ready='1'] .cards", timeout=20000)
        # The cloud's nodes: this one, running, holding the devices online.
        row = admin.inner_text("section.nodes tbody tr")
        _, nodes = api("GET", "/api/v1/nodes")
        held = nodes["nodes"][0]["devices_online"]
        assert "local" in row and "this one" in row and "running" in row and f"\t{held}\t" in row and held >= 2, (row, nodes)
        # The version it runs, and no word of mixed versions on one node.
        assert nodes["nodes"][0]["version"] and f"\t{nodes['version']}\t" in row, (row, nodes)
        assert admin.locator("section.nodes [data-mixed]").count() == 0
        shot(admin, "02-dashboard")
        ready(admin, "/devices")
        for lc in ["site-1", "site-2", "xss-1"]:
            assert admin.locator(f"li[data-code='{lc}']").count() == 1, lc
        shot(admin, "03-devices")
    check("the admin logs in and sees every device", admin_sees_all)

    def xss_is_text():
        ready(admin, "/devices/xss-1")
        assert admin.inner_text("h1") == XSS, admin.inner_text("h1")
        ready(admin, "/devices")
        assert admin.get_by_text(XSS).count() >= 1
        assert admin.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert not dialogs, dialogs
    check("a device named <img src=x onerror=alert(1)> renders as text", xss_is_text)

    def device_page():
        ready(admin, "/devices/site-1")
        assert admin.locator(".channels .card").count() == 4
        shot(admin, "04-device")
    check("the device page lists its four channels", device_page)

    def network_inventory():
        ready(admin, "/devices")
        admin.get_by_role("button", name="Network settings").click()
        admin.wait_for_selector("section.inventory span:has-text('channels read')", timeout=30000)
        said = admin.inner_text("section.inventory .row span")
        assert said.startswith("5 channels read, 0 failed"), said
        rows = [r.split("\t") for r in admin.locator("section.inventory tbody tr").all_inner_texts()]
        # A named camera's row shows its name, then its login code.
        assert [r[0] for r in rows if r[0].endswith("site-2")] == ["Back yard site-2"], rows
        # Counts read as words do: "4 channels", "1 channel".
        counts = {lc: admin.locator(f"li[data-code='{lc}'] span.muted").last.inner_text() for lc in ["site-1", "site-2"]}
        assert counts == {"site-1": "4 channels", "site-2": "1 channel"}, counts
        rows = [[r[0].split()[-1], *r[1:]] for r in rows]
        by = {(r[0], r[1]): r for r in rows}
        # The built-in channel's settings, as the edge reports them.
        assert by[("site-1", "0")][3:] == ["192.168.1.64", "255.255.255.0", "192.168.1.1", "off", "02:00:00:00:00:00"], rows
        # The real cameras behind channels 2 (CVIP) and 3 (DVRIP) answer with theirs.
        for ch in ["2", "3"]:
            assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", by[("site-1", ch)][3]), rows
        assert ("site-2", "0") in by and not any(r[0] == "xss-1" for r in rows), rows
        shot(admin, "03b-network")
        with admin.expect_download() as dl:
            admin.click("section.inventory a:has-text('Download CSV')")
        with open(dl.value.path(), encoding="utf-8") as f:
            csv = f.read().splitlines()
        assert csv[0] == '"device","channel","iface","ip","netmask","gateway","dhcp","mac","error","name"', csv[0]
        assert any(line.startswith('"site-1","0",') and '"192.168.1.64"' in line for line in csv), csv
        # Only the devices the search shows.
        admin.fill("input[type=search]", "back yard")
        admin.get_by_role("button", name="Network settings").click()
        admin.wait_for_selector("section.inventory span:has-text('1 channel read')", timeout=30000)
        assert admin.locator("section.inventory tbody tr").count() == 1
    check("the devices page reads every shown camera's network settings in batches, as a table and CSV", network_inventory)

    def rename_and_motion():
        ready(admin, "/devices/xss-1")
        admin.fill("input[name=name]", "Side door")
        admin.click("form.row button[type=submit]")
        admin.wait_for_selector("p.ok", timeout=10000)
        assert api("GET", "/api/v1/devices/xss-1")[1]["name"] == "Side door"
        api("PATCH", "/api/v1/devices/xss-1", {"name": XSS})
        ready(admin, "/devices/site-1/channels/1")
        admin.click(".detect details summary")
        admin.check(".detect details[open] input[aria-label=Enabled]")
        admin.click(".detect details[open] button[type=submit]")
        admin.wait_for_selector("p.ok", timeout=10000)
        _, log = api("GET", "/api/v1/audit")
        assert any(e["action"] == "rpc" and e["detail"]["method"] == "AlarmMoveDetectConfig"
                   and e["detail"]["params"]["enable"] is True and e["actor"] == "user:root" for e in log), log[:3]
    check("the console renames a device and sets motion detection (audited)", rename_and_motion)

    def motion_form_shows_what_was_applied():
        # IVR RPC cannot read detection settings back: the page shows what
        # was last applied through the cloud, and by whom.
        api("POST", "/api/v1/devices/site-1/rpc/AlarmMoveDetectConfig",
            {"channel": 1, "enable": True, "sensitivity": 73, "delay": 12, "start": 8 * 3600, "end": 18 * 3600})
        status, d = api("GET", "/api/v1/devices/site-1/channels/1/detection")
        assert status == 200 and d["motion"]["config"]["sensitivity"] == 73 and d["intrusion"] is None, d
        assert d["motion"]["set_by"] == "admin-token", d
        ready(admin, "/devices/site-1/channels/1")
        form = admin.locator(".detect form[data-kind=motion]")
        assert form.is_visible(), "applied and enabled: the motion form opens by itself"
        assert form.locator("input[type=number]").first.input_value() == "73"
        assert [form.locator("input[type=time]").nth(i).input_value() for i in (0, 1)] == ["08:00", "18:00"]
        assert not form.get_by_label("all day", exact=True).is_checked(), "an armed window shows as hours"
        assert "Last applied by admin-token" in form.inner_text(), form.inner_text()
        assert api("GET", "/api/v1/devices/site-1/channels/9/detection")[0] == 404
    check("the motion form shows the settings last applied, by whom (GET …/detection)", motion_form_shows_what_was_applied)

    def intrusion_area_drawn_on_the_picture():
        ready(admin, "/devices/site-1/channels/3")
        admin.click(".detect details:has(form[data-kind=intrusion]) summary")
        form = admin.locator(".detect form[data-kind=intrusion]")
        form.get_by_label("Enabled", exact=True).check()
        pad = form.locator(".area")
        pad.scroll_into_view_if_needed()
        b = pad.bounding_box()
        admin.mouse.move(b["x"] + b["width"] * 0.6, b["y"] + b["height"] * 0.55)
        admin.mouse.down()
        admin.mouse.move(b["x"] + b["width"] * 0.75, b["y"] + b["height"] * 0.7, steps=5)
        admin.mouse.move(b["x"] + b["width"] * 0.9, b["y"] + b["height"] * 0.85, steps=5)
        admin.mouse.up()
        edges = [int(form.locator(f"input[data-edge={e}]").input_value()) for e in ("left", "top", "right", "bottom")]
        assert 55 <= edges[0] <= 65 and 50 <= edges[1] <= 60 and 85 <= edges[2] <= 95 and 80 <= edges[3] <= 90, edges
        shot(admin, "05c-intrusion-area")
        form.locator("button[type=submit]").click()
        admin.wait_for_selector("p.ok", timeout=15000)
        # The camera itself (a DVRIP simulator behind the edge) now has that
        # area as its motion region: read it with ivr dvrip.
        r = subprocess.run([ivr, "dvrip", "--host", "127.0.0.1", "--port", cam265, "--password", "cam-pw", "--json",
                            "config", "get", "Detect.MotionDetect.[0]"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        region = [int(x, 16) for x in got["Region"]]
        assert got["Enable"] is True, got
        l, t, rt, bt = edges
        c0, c1 = l * 22 // 100, -(-rt * 22 // 100)
        r0, r1 = t * 18 // 100, -(-bt * 18 // 100)
        mask = sum(1 << c for c in range(c0, c1))
        assert region == [mask if r0 <= row < r1 else 0 for row in range(18)], (edges, got["Region"])
        status, d = api("GET", "/api/v1/devices/site-1/channels/3/detection")
        assert d["intrusion"]["config"]["rect"] == {"ulx": l, "uly": t, "urx": rt, "ury": t, "dlx": l, "dly": bt,
                                                    "drx": rt, "dry": bt}, d
        assert d["intrusion"]["set_by"] == "user:root", d
    check("an intrusion area drawn on the picture becomes the camera's motion region (read back with ivr dvrip)",
          intrusion_area_drawn_on_the_picture)

    def chinese():
        ready(admin, "/devices")
        admin.click("#who button.link")
        admin.wait_for_selector("body[data-ready='1']", timeout=20000)
        assert "设备" in admin.inner_text("#nav"), admin.inner_text("#nav")
        shot(admin, "04b-devices-zh")
        admin.click("#who button.link")
        admin.wait_for_selector("body[data-ready='1']", timeout=20000)
        assert "Devices" in admin.inner_text("#nav")
    check("the console switches to Simplified Chinese and back", chinese)

    def live_channel():
        ready(admin, "/devices/site-1/channels/0")
        plays(admin, "#player")
        shot(admin, "05-channel-live")
    check("a live channel page plays (currentTime advances, frames decoded)", live_channel)

    def timeline_playback():
        time.sleep(max(0, rec_started + 8 - time.time()))
        ready(admin, "/devices/site-1/channels/0")
        box = ten_minutes(admin)
        # Into the span, a little before its end (what was recorded seconds ago).
        admin.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
        try:
            admin.wait_for_selector("#player video[src*='/recordings/']", timeout=10000)
        except Exception:
            raise AssertionError(f"no playback; the page says {admin.inner_text('main')[-400:]!r}")
        plays(admin, "#player")
        shot(admin, "06-channel-playback")
    check("the timeline shows a recorded span and a click plays it back", timeline_playback)

    def playback_goes_on():
        # Files of 6 s instead of 10 min, so that the recording made during
        # this test spans several: playback must go on from one to the next.
        time.sleep(max(0, rec_started + 30 - time.time()))
        ready(admin, "/devices/site-1/channels/0")
        admin.evaluate("import('/ui/playback.js').then((m) => { m.settings.window = 6; m.settings.ahead = 4; })")
        box = ten_minutes(admin)
        admin.mouse.click(box["x"] + 4, box["y"] + box["height"] / 2)
        admin.wait_for_function("() => document.querySelector('#player').dataset.playingAt", timeout=10000)
        first = admin.evaluate("() => [Number(document.querySelector('#player').dataset.playingAt), "
                               "document.querySelector('#player').ivrPlayback.src]")
        try:
            admin.wait_for_function(
                f"() => {{ const t = document.querySelector('#player'); const v = t.ivrPlayback;"
                f" return v && v.src !== {json.dumps(first[1])} && Number(t.dataset.playingAt) > {first[0] + 9}"
                f" && v.getVideoPlaybackQuality().totalVideoFrames > 0; }}", timeout=30000)
        except Exception:
            now = admin.evaluate("() => [document.querySelector('#player').dataset.playingAt, document.querySelector('#player').ivrPlayback.src]")
            raise AssertionError(f"playback stopped at {now} (began at {first}); the page says {admin.inner_text('main')[:300]!r}")
        note = admin.inner_text("main p")
        assert "Playing back:" in note, note
        # Only the file on screen and at most the next one are loaded.
        n = admin.evaluate("() => document.querySelectorAll('#player video').length")
        assert n <= 2, n
    check("playback goes on from one file to the next and shows the recorded moment", playback_goes_on)

    def hold():
        ready(admin, "/devices/site-1/channels/0")
        box = ten_minutes(admin)
        y = box["y"] + box["height"] / 2

        def pick():
            admin.mouse.move(box["x"] + box["width"] * 0.2, y)
            admin.mouse.down()
            admin.mouse.move(box["x"] + box["width"] * 0.8, y, steps=5)
            admin.mouse.up()
            admin.wait_for_selector(".tl-keep", state="visible", timeout=10000)

        def erase(expect):
            pick()
            admin.click(".tl-erase")
            assert "cannot be undone" in admin.inner_text(".tl-erase"), admin.inner_text(".tl-erase")
            admin.click(".tl-erase")
            admin.wait_for_function(f"() => document.querySelector('.timeline').innerText.includes({json.dumps(expect)})",
                                    timeout=10000)
        pick()
        admin.fill(".tl-keep-note", "case 7: the ladder")
        admin.click(".tl-keep")
        admin.wait_for_selector(".tl-hold", timeout=10000)
        row = admin.inner_text(".tl-hold-row")
        assert "case 7: the ladder" in row and "user:root" in row, row
        assert "Kept from retention" in admin.inner_text(".timeline"), admin.inner_text(".timeline")
        s, j = api("GET", "/api/v1/devices/site-1/channels/0/holds")
        assert s == 200 and len(j["holds"]) == 1, (s, j)
        k = j["holds"][0]
        assert k["note"] == "case 7: the ladder" and k["created_by"] == "user:root" and k["to"] > k["from"], k
        shot(admin, "06c-timeline-hold")
        erase("release them first")  # the hold refuses the erasure
        admin.click(".tl-hold-row button")
        admin.wait_for_function("() => document.querySelectorAll('.tl-hold').length === 0", timeout=10000)
        s, j = api("GET", "/api/v1/devices/site-1/channels/0/holds")
        assert s == 200 and j["holds"] == [], (s, j)
        erase("Deleted")
        _, audit = api("GET", "/api/v1/audit")
        assert [a for a in audit if a["action"] == "recordings_erased" and a["actor"] == "user:root"], audit[:5]
    check("an operator drags a range on the timeline and keeps it from retention (a hold), which refuses an "
          "erasure until released; then the admin erases it", hold)

    def schedule_policy():
        # Set through the API first: what the form does not show
        # (seg_duration) must survive a save from the console.
        path = "/api/v1/devices/site-1/channels/2/record-policy"
        s, _ = api("PUT", path, {"mode": "alarm", "seg_duration": 4, "retention_days": 7})
        assert s == 200, s
        tokyo = new_page(timezone="Asia/Tokyo")
        login(tokyo, "root", "root-password-1")
        tokyo.wait_for_url(base + "/", timeout=10000)
        ready(tokyo, "/devices/site-1/channels/2")
        tokyo.wait_for_function("() => document.querySelector('fieldset.policy select').value === 'alarm'",
                                timeout=10000)
        tokyo.select_option("fieldset.policy select", "schedule")
        row = tokyo.locator("fieldset.policy .window").first
        # One day that is not today in Tokyo, 03:00-03:01: nothing starts
        # recording during the test.
        today = tokyo.evaluate("""() => ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'].indexOf(
            new Intl.DateTimeFormat('en-US', {timeZone: 'Asia/Tokyo', weekday: 'short'}).format(new Date())) + 1""")
        assert 1 <= today <= 7, today
        day = today % 7 + 1
        for d in range(1, 8):
            row.locator(f"input[type=checkbox][value='{d}']").set_checked(d == day)
        row.locator("input[name=from]").fill("03:00")
        row.locator("input[name=to]").fill("03:01")
        tz = tokyo.input_value("fieldset.policy input[list]")
        assert tz == "Asia/Tokyo", f"the time zone offered is {tz!r}, not the browser's"
        shot(tokyo, "06b-record-schedule")
        tokyo.click("fieldset.policy button.save-policy")
        tokyo.wait_for_selector("p.ok", timeout=10000)
        s, p = api("GET", path)
        want = {"mode": "schedule", "timezone": "Asia/Tokyo", "seg_duration": 4, "retention_days": 7,
                "schedule": [{"days": [day], "from": "03:00", "to": "03:01"}]}
        assert s == 200 and all(p.get(k) == v for k, v in want.items()), (p, want)
        ready(tokyo, "/devices/site-1/channels/2")
        tokyo.wait_for_function("() => document.querySelector('fieldset.policy select').value === 'schedule'",
                                timeout=10000)
        assert tokyo.locator("fieldset.policy .window input[type=checkbox]:checked").count() == 1
        assert tokyo.input_value("fieldset.policy .window input[name=from]") == "03:00"
        tokyo.context.close()
        api("PUT", path, {"mode": "off"})
    check("the console sets a weekly schedule in the browser's time zone; fields it does not show are kept",
          schedule_policy)

    def ptz():
        ready(admin, "/devices/site-1/channels/2")
        btn = admin.locator("button.ptz[data-op='right']")
        btn.hover()
        admin.mouse.down()
        time.sleep(0.8)
        admin.mouse.up()
        time.sleep(0.3)
        r = subprocess.run([ivr, "cvip", "--host", "127.0.0.1", "--port", ptz_cam, "--json", "get", "cviPtz",
                            "panPosition"], capture_output=True, text=True, timeout=60)
        pan = float(json.loads(r.stdout)["panPosition"])
        assert pan > 1, f"panPosition {pan} ({r.stderr[:200]})"
        shot(admin, "07-channel-ptz")
    check("a PTZ press moves the camera (panPosition read back from it)", ptz)

    def events_picture():
        ready(admin, "/events?type=alarm")
        admin.wait_for_function("() => [...document.querySelectorAll('img.thumb')].some(i => i.naturalWidth > 0)",
                                timeout=15000)
        shot(admin, "08-events")
    check("the events page shows an alarm picture", events_picture)

    def h265():
        ready(admin, "/devices/site-1/channels/3")
        admin.wait_for_selector("#player[data-cannot-decode]", timeout=20000)
        note = admin.inner_text("#player .tile-note")
        assert "cannot decode" in note and "H.265" in note.upper().replace("HEVC", "H.265"), note
        shot(admin, "09-h265-cannot-decode")
        admin.click("#player .tile-note button[data-quality='sd']")
        plays(admin, "#player")
        info = admin.inner_text("#player .tile-info")
        assert info.startswith("avc1"), info
        shot(admin, "10-h265-sub-stream")
    check("an H.265 channel says it cannot be decoded here and plays its H.264 sub-stream", h265)

    def transcoded():
        ready(admin, "/devices/site-1/channels/3")
        admin.wait_for_selector("#player[data-cannot-decode]", timeout=20000)
        admin.click("#player .tile-note button[data-quality='h264']")
        plays(admin, "#player", secs=30)
        info = admin.inner_text("#player .tile-info")
        assert info.startswith("avc1") and "×720" in info, info
        shot(admin, "10b-h265-transcoded")
        # --transcode 1: a second rendition while this one plays is refused, saying why.
        status, body = api("POST", "/api/v1/devices/site-2/channels/0/live", {"quality": "h264"})
        assert status == 503 and "transcoders are busy" in body["error"], (status, body)
        _, stats = api("GET", "/api/v1/stats")
        assert stats["live"]["transcoders"] == 1, stats["live"]
    check("--transcode: the H.265 channel plays as a 720-line H.264 rendition; past the limit, 503", transcoded)

    def grid():
        ready(admin, "/live")
        picks = [{"lc": "site-1", "ch": 0}, {"lc": "site-1", "ch": 1}, {"lc": "site-2", "ch": 0}, {"lc": "site-1", "ch": 3}]
        admin.evaluate(f"() => localStorage.setItem('ivr.grid', JSON.stringify({{n: 4, picks: {json.dumps(picks)}}}))")
        ready(admin, "/live")
        for i in range(4):
            plays(admin, f"[data-tile='{i}']")
        shot(admin, "11-live-grid")
    check("a 4-tile live grid plays every tile (and is remembered)", grid)

    def admin_pages():
        for i, path in enumerate(["/users", "/tokens", "/audit"]):
            ready(admin, path)
            assert admin.locator("table").count() == 1, path
            shot(admin, f"{12 + i:02d}-{path[1:]}")
    check("the users, tokens and audit pages render", admin_pages)

    def viewer():
        status, _ = api("POST", "/api/v1/users", {"name": "vera", "password": "vera-password", "role": "viewer",
                                                  "devices": ["site-2"]})
        assert status == 201, status
        v = new_page({"width": 390, "height": 844})  # a phone
        login(v, "vera", "vera-password")
        v.wait_for_url(base + "/", timeout=10000)
        v.wait_for_selector("body[data-ready='1'] .cards", timeout=20000)
        assert v.locator("section.nodes").count() == 0, "a viewer sees the cloud's nodes"
        ready(v, "/devices")
        codes = v.evaluate("() => [...document.querySelectorAll('li[data-code]')].map(l => l.dataset.code)")
        assert codes == ["site-2"], codes
        assert v.get_by_role("button", name="Network settings").count() == 0, "a viewer may read network settings"
        shot(v, "15-viewer-devices-phone")
        ready(v, "/devices/site-2/channels/0")
        plays(v, "#player")
        assert v.locator("button.ptz").count() == 0, "a viewer has PTZ buttons"
        assert v.locator(".tl-keep").count() == 0, "a viewer may keep ranges"
        shot(v, "16-viewer-channel-phone")
        _, evs = api("GET", "/api/v1/events?login_code=site-1&type=alarm&limit=1")
        other = evs[0]["id"]
        got = v.evaluate("""async (id) => {
            const live = await fetch('/api/v1/devices/site-1/channels/0/live', {method: 'POST'});
            const pic = await fetch(`/api/v1/events/${id}/picture`);
            const dev = await fetch('/api/v1/devices/site-1');
            const seen = [];
            const es = new EventSource('/api/v1/stream');
            for (const k of ['alarm', 'channel_state', 'online', 'offline']) es.addEventListener(k, m => seen.push(JSON.parse(m.data).login_code));
            await new Promise(r => setTimeout(r, 7000));
            es.close();
            return [live.status, pic.status, dev.status, seen];
        }""", other)
        assert got[:3] == [404, 404, 404], got
        assert "site-1" not in got[3] and "site-2" in got[3], got[3]
    check("a viewer sees only their device, has no PTZ, and gets 404 and no events for another", viewer)

    def revoked_token():
        status, t = api("POST", "/api/v1/tokens", {"name": "wall", "role": "viewer", "devices": "*"})
        assert status == 201, t
        assert api("GET", "/api/v1/devices", bearer=t["token"])[0] == 200
        assert api("DELETE", f"/api/v1/tokens/{t['id']}")[0] == 204
        status, body = api("GET", "/api/v1/devices", bearer=t["token"])
        assert status == 401, (status, body)
    check("a revoked token stops working at once", revoked_token)

    def root_saying_yes():
        """The admin in a page of their own that accepts every confirm()."""
        asked = []
        page = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-US").new_page()
        page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
        login(page, "root", "root-password-1")
        page.wait_for_url(base + "/", timeout=10000)
        return page, asked

    def firmware_upgrade():
        # An image for the edges' hardware in the catalogue: the device page
        # offers it, the button (confirmed) sends UpgradeFirmware, and the
        # site's agent downloads it and comes back running it.
        image = os.urandom(200_000)
        req = urllib.request.Request(f"{base}/api/v1/firmware/ivr-edge/9.9.9-console", method="PUT", data=image,
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 201, r.status
        up, asked = root_saying_yes()
        ready(up, "/devices/site-2")
        button = up.get_by_role("button", name="Upgrade to 9.9.9-console")
        assert button.count() == 1, up.inner_text("main")
        shot(up, "04c-device-upgrade")
        button.click()
        assert asked and "9.9.9-console" in asked[0], asked
        up.wait_for_selector("p.ok", timeout=10000)
        for _ in range(300):
            d = api("GET", "/api/v1/devices/site-2")[1]
            if d["firmware_model"] == "9.9.9-console" and d["online"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"site-2 did not come back running the new image: {d}")
        ready(up, "/devices/site-2")
        assert up.get_by_role("button", name="Upgrade to 9.9.9-console").count() == 0, "offered what already runs"
        up.context.close()
    check("the device page offers the catalogue's newer image; the button upgrades the site (it comes back running it)",
          firmware_upgrade)

    def firmware_page():
        fp, asked = root_saying_yes()
        ready(fp, "/firmware")
        row = fp.locator("tr", has_text="9.9.9-console")
        assert "1 of 2 device(s)" in row.inner_text() and "offered" in row.inner_text(), row.inner_text()
        image = os.urandom(3_000_000)
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
            f.write(image)
            path = f.name
        fp.fill("input[name=hardware_model]", "ivr-edge")
        fp.fill("input[name=firmware_model]", "10.0.0-page")
        fp.set_input_files("input[name=image]", path)
        fp.click("form.login button[type=submit]")
        fp.wait_for_selector("p.ok:has-text('Uploaded 10.0.0-page')", timeout=30000)
        os.remove(path)
        listed = {f["firmware_model"]: f for f in api("GET", "/api/v1/firmware")[1]}
        got = listed["10.0.0-page"]
        assert got["size"] == len(image) and got["sha256"] == hashlib.sha256(image).hexdigest(), got
        assert "offered" in fp.locator("tr", has_text="10.0.0-page").inner_text()
        assert "offered" not in fp.locator("tr", has_text="9.9.9-console").inner_text()
        shot(fp, "14b-firmware")
        fp.locator("tr", has_text="10.0.0-page").get_by_role("button", name="Delete").click()
        fp.wait_for_selector("p.ok", timeout=10000)
        assert asked and "10.0.0-page" in asked[-1], asked
        assert "10.0.0-page" not in [f["firmware_model"] for f in api("GET", "/api/v1/firmware")[1]]
        assert fp.locator("tr", has_text="10.0.0-page").count() == 0
        assert api("DELETE", "/api/v1/firmware/ivr-edge/10.0.0-page")[0] == 404
        assert any(e["action"] == "firmware_deleted" and e["actor"] == "user:root" for e in api("GET", "/api/v1/audit")[1])
        fp.context.close()
    check("the firmware page lists the catalogue with what devices run, uploads an image and deletes one", firmware_page)
    assert not dialogs, f"a page opened a dialog: {dialogs}"


if __name__ == "__main__":
    sys.exit(main())
