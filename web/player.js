// A live player: asks the cloud for a channel's stream, checks that this
// browser can decode its codec, then feeds fragments from the WebSocket
// into Media Source Extensions. Where MSE is missing (iOS Safari) it plays
// the HLS playlist natively. It never leaves a black box spinning: every
// failure is said in words on the tile.

import { api } from "./api.js";
import { t } from "./i18n.js";
import { h } from "./dom.js";

/** `hvc1.1.6.L150.90` as a person names it. */
export function codecName(c) {
  if (/^(hvc1|hev1)/.test(c || "")) return `H.265/HEVC (${c})`;
  if (/^avc[13]/.test(c || "")) return `H.264 (${c})`;
  return c || "?";
}

export class LivePlayer {
  /** `box`: the element to fill; `lc`, `ch`: the channel; `quality`: hd (main) or sd (sub). */
  constructor(box, lc, ch, quality = "hd") {
    this.box = box;
    this.lc = lc;
    this.ch = ch;
    this.quality = quality;
    this.video = h("video", { muted: true, autoplay: true, playsInline: true });
    this.video.muted = true;
    this.note = h("div", { class: "tile-note" }, t("starting_live"));
    this.info = h("div", { class: "tile-info" });
    box.replaceChildren(this.video, this.note, this.info);
    this.stats = { bytes: 0, fragments: 0, mime: null, error: null };
    box.ivrPlayer = this;
    this.start();
  }

  say(text, bad, extra) {
    this.note.replaceChildren(text, ...(extra ? [extra] : []));
    this.note.hidden = !text;
    this.note.classList.toggle("bad", !!bad);
    if (bad) this.stats.error = text;
  }

  async start() {
    let r;
    try {
      r = await api("POST", `/api/v1/devices/${encodeURIComponent(this.lc)}/channels/${this.ch}/live`, { quality: this.quality });
    } catch (e) {
      this.say(e.message, true);
      return;
    }
    if (this.closed) return;
    this.stats.mime = r.mime;
    this.info.textContent = `${r.codec || ""} ${r.width || ""}×${r.height || ""}`;
    const mse = window.MediaSource || window.ManagedMediaSource;
    if (!mse) {
      if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
        this.video.src = r.urls.hls;
        this.say("");
        return;
      }
      this.say("This browser has neither Media Source Extensions nor HLS.", true);
      return;
    }
    if (!mse.isTypeSupported(r.mime)) {
      // Chromium on Linux and Firefox do not decode H.265: say so, and
      // offer the sub-stream (usually H.264).
      const other = (q, label) => h("button", { class: "link", dataset: { quality: q }, onclick: () => {
        this.close();
        new LivePlayer(this.box, this.lc, this.ch, q);
      } }, label);
      const alt = h("span", {},
        this.quality !== "sd" ? other("sd", t("try_sub")) : null,
        r.transcode && this.quality !== "h264" ? other("h264", t("try_h264")) : null);
      this.say(t("cannot_decode", codecName(r.codec)), true, alt);
      this.box.dataset.cannotDecode = r.codec;
      return;
    }
    this.open(mse, r);
  }

  open(MSE, r) {
    const ws = new WebSocket(r.urls.ws);
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    const queue = [];
    let sb = null;
    const pump = () => {
      if (!sb || sb.updating || !queue.length) return;
      try {
        sb.appendBuffer(queue.shift());
      } catch (e) {
        this.say(e.message, true);
        ws.close();
      }
    };
    ws.onmessage = (m) => {
      if (typeof m.data === "string") {
        const ms = new MSE();
        this.video.src = URL.createObjectURL(ms);
        ms.addEventListener("sourceopen", () => {
          sb = ms.addSourceBuffer(r.mime);
          sb.mode = "segments";
          sb.addEventListener("updateend", () => {
            const b = sb.buffered;
            if (b.length) {
              const end = b.end(b.length - 1);
              // Live: stay within a second of the newest frame; keep 30 s.
              if (this.video.currentTime < b.start(0) || end - this.video.currentTime > 2) {
                this.video.currentTime = Math.max(b.start(0), end - 0.3);
              }
              if (!sb.updating && this.video.currentTime - b.start(0) > 30) sb.remove(b.start(0), this.video.currentTime - 10);
            }
            pump();
          });
          pump();
        });
        this.say("");
        this.video.play().catch(() => {});
        return;
      }
      this.stats.bytes += m.data.byteLength;
      this.stats.fragments += 1;
      queue.push(m.data);
      pump();
    };
    ws.onclose = (e) => {
      if (!this.closed && !this.stats.error) this.say(t("stream_ended") + (e.reason ? " " + e.reason : ""), !this.stats.fragments);
    };
  }

  /** Decoded frames so far (what a test and the tile's corner show). */
  frames() {
    const q = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality() : null;
    return q ? q.totalVideoFrames : 0;
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
    this.video.removeAttribute("src");
    this.video.load();
  }
}
