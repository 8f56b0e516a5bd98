// Recorded playback: a channel's recording as a chain of MP4 files of a
// few minutes each, played one after the other in `<video>` elements.
//
// Why a chain and not one long file: a browser's first request for an MP4
// asks for a byte range, and the cloud learns the file's size by
// assembling it once without sending it, which reads every segment of the
// range from the disk (1.5 s for an hour of a 4 Mbit/s camera on the
// test machine's disk, many seconds on a spinning one). Ten minutes start
// six times sooner. While one file plays, the next is asked for and
// loaded in a hidden element, so playback goes on across files without a
// pause, jumps over gaps to the next recorded span, and stops where
// nothing more is recorded.

import { api } from "./api.js";
import { h } from "./dom.js";

/** Seconds one file spans; how long before its end the next is loaded. */
export const settings = { window: 600, ahead: 30 };

export class RecordingPlayer {
  /**
   * `box`: the element to fill; `on.time(secs)`: the recorded instant on
   * screen; `on.end()`: nothing more to play; `on.error(message)`.
   */
  constructor(box, lc, ch, on) {
    this.box = box;
    this.path = `/api/v1/devices/${encodeURIComponent(lc)}/channels/${ch}`;
    this.on = on;
    this.cur = null;
    this.next = null;
    this.last = null;
    this.closed = false;
  }

  /** Plays from `from`; with `to`, stops there, else goes on. Answers the first file's playback (or null). */
  async play(from, to = null) {
    this.last = to;
    const f = await this.tryOpen(from, to ?? from + settings.window);
    if (!f || this.closed) return null;
    this.show(f);
    return f.r;
  }

  /** `open`, a failure said and answered as null. */
  tryOpen(from, to) {
    return this.open(from, to).catch((e) => {
      this.on.error(e.message);
      return null;
    });
  }

  /** Asks for the file of `from..to` and starts loading it in a hidden `<video>`. */
  async open(from, to) {
    const r = await api("POST", `${this.path}/playback`, { from, to });
    const v = h("video", { controls: true, muted: true, playsInline: true, preload: "auto", hidden: true, src: r.urls.mp4 });
    v.muted = true;
    const f = { r, v, from: r.from, to: r.to, start: r.start ?? r.from };
    v.addEventListener("timeupdate", () => this.tick(f));
    v.addEventListener("ended", () => this.ended(f));
    v.addEventListener("error", () => {
      if (f === this.cur) this.on.error(v.error ? v.error.message || `media error ${v.error.code}` : "media error");
    });
    if (this.closed) return f;
    this.box.append(v);
    return f;
  }

  show(f) {
    const old = this.cur;
    this.cur = f;
    f.v.hidden = false;
    f.v.play().catch(() => {});
    if (old) this.drop(old);
    this.box.ivrPlayback = f.v;
    this.on.time(f.start);
  }

  drop(f) {
    f.v.pause();
    f.v.removeAttribute("src");
    f.v.load();
    f.v.remove();
  }

  /** The recorded instant; near the end of a file that runs to its window's end, the next file. */
  tick(f) {
    if (f !== this.cur) return;
    const v = f.v;
    this.on.time(f.start + v.currentTime);
    const full = isFinite(v.duration) && f.start + v.duration >= f.to - 1;
    if (this.last == null && !this.next && full && v.duration - v.currentTime < settings.ahead) {
      // A failure here is handled at the end, which looks again.
      this.next = this.open(f.to, f.to + settings.window).catch(() => null);
    }
  }

  async ended(f) {
    if (f !== this.cur || this.closed) return;
    const end = f.start + (isFinite(f.v.duration) ? f.v.duration : f.v.currentTime);
    if (this.last != null && end >= this.last - 1) return this.on.end();
    let n = this.next ? await this.next : null;
    this.next = null;
    if (!this.closed && (!n || n.from > end + 1)) {
      if (n) this.drop(n);
      n = await this.after(end);
    }
    if (this.closed) return n && this.drop(n);
    if (!n) return this.on.end();
    this.show(n);
  }

  /**
   * The file that follows what ended at `end` (a gap, or a file that
   * ran short): what was recorded after it, in the same span (recorded
   * since that file was made) or the next one; null when there is
   * nothing (the end of what is recorded so far).
   */
  async after(end) {
    const until = this.last ?? end + 30 * 86400;
    if (until <= end + 1) return null;
    const q = `from=${end.toFixed(3)}&to=${until.toFixed(3)}&limit=200`;
    let spans;
    try {
      spans = (await api("GET", `${this.path}/recordings?${q}`)).spans;
    } catch (e) {
      this.on.error(e.message);
      return null;
    }
    // At least a second more than what was played, so that every file
    // moves playback on.
    const s = spans.find((x) => x.to > end + 1);
    if (!s) return null;
    const from = Math.max(s.from, end);
    return this.tryOpen(from, this.last ?? from + settings.window);
  }

  close() {
    this.closed = true;
    if (this.cur) this.drop(this.cur);
    if (this.next) this.next.then((n) => n && this.drop(n));
    this.cur = this.next = null;
  }
}
