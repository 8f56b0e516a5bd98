// A channel's recordings on a time axis: recorded spans, the gaps
// between them and alarms, zoomable from a month to a minute. A click
// plays back from that instant; a drag selects a range to download or,
// for operators, to keep from retention (a hold, shown as an amber band).

import { api } from "./api.js";
import { h } from "./dom.js";
import { t, lang } from "./i18n.js";

const LEVELS = [
  ["month", 30 * 86400],
  ["day", 86400],
  ["hour", 3600],
  ["10 min", 600],
  ["1 min", 60],
];

export class Timeline {
  /**
   * `on.play(secs)`: play from an instant; `on.range(from, to)`: a URL of that range as MP4;
   * `on.keep(from, to, note)` and `on.release(id)` (operators only): make and release holds;
   * `on.erase(from, to)` (admins only): delete what was recorded in a range.
   */
  constructor(lc, ch, on) {
    this.lc = lc;
    this.ch = ch;
    this.on = on;
    this.level = 2;
    this.toNow();
    this.bar = h("div", { class: "tl-bar", role: "slider", "aria-label": t("timeline"), tabindex: 0 });
    this.axis = h("div", { class: "tl-axis" });
    this.label = h("span", { class: "muted" });
    this.dl = h("a", { class: "tl-dl", hidden: true, download: `${lc}-${ch}.mp4` }, t("download"));
    this.note = h("span", { class: "muted" });
    this.keepNote = h("input", { class: "tl-keep-note", placeholder: t("keep_why"), maxlength: 500, "aria-label": t("keep_why") });
    this.keepBtn = h("button", { class: "tl-keep", onclick: () => this.keep() }, t("keep"));
    this.keepBox = h("span", { class: "row", hidden: true }, this.keepNote, this.keepBtn);
    this.eraseBtn = h("button", { class: "danger tl-erase", hidden: true, onclick: () => this.erase() }, t("erase"));
    this.holdList = h("div", { class: "tl-holds" });
    const zoom = LEVELS.map(([name], i) => h("button", { dataset: { level: i }, onclick: () => this.zoom(i) }, name));
    this.zoomButtons = zoom;
    this.el = h("div", { class: "timeline" },
      h("div", { class: "row" },
        h("button", { onclick: () => this.shift(-0.75), "aria-label": "earlier" }, t("prev")),
        h("button", { onclick: () => this.shift(0.75), "aria-label": "later" }, t("next")),
        h("button", { onclick: () => { this.toNow(); this.load(); } }, t("now")),
        zoom, this.label),
      this.bar, this.axis, h("div", { class: "row" }, this.note, this.dl, on.keep ? this.keepBox : "", on.erase ? this.eraseBtn : ""), this.holdList);
    this.drag();
  }

  span() {
    return LEVELS[this.level][1];
  }

  from() {
    return this.mid - this.span() / 2;
  }

  /** Puts `secs` in the middle, at the hour level. */
  centre(secs) {
    this.level = 2;
    this.mid = secs;
  }

  zoom(i) {
    // At the live edge, zooming keeps "now" at the right; elsewhere the middle stays.
    const atNow = this.from() + this.span() >= Date.now() / 1000;
    this.level = Math.max(0, Math.min(LEVELS.length - 1, i));
    if (atNow) this.toNow();
    this.load();
  }

  toNow() {
    this.mid = Date.now() / 1000 - this.span() * 0.45;
  }

  shift(f) {
    this.mid += this.span() * f;
    this.load();
  }

  x2t(clientX) {
    const r = this.bar.getBoundingClientRect();
    return this.from() + ((clientX - r.left) / r.width) * this.span();
  }

  drag() {
    let start = null;
    this.bar.addEventListener("pointerdown", (e) => {
      start = e.clientX;
      this.bar.setPointerCapture(e.pointerId);
    });
    this.bar.addEventListener("pointerup", async (e) => {
      if (start == null) return;
      const [a, b] = [this.x2t(Math.min(start, e.clientX)), this.x2t(Math.max(start, e.clientX))];
      const moved = Math.abs(e.clientX - start) > 4;
      start = null;
      this.sel && this.sel.remove();
      if (!moved) {
        this.mark(a);
        this.on.play(a);
        return;
      }
      this.sel = h("div", { class: "tl-sel" });
      this.place(this.sel, a, b);
      this.bar.append(this.sel);
      this.picked = [a, b];
      this.keepBox.hidden = false;
      this.eraseBtn.hidden = false;
      this.eraseBtn.textContent = t("erase");
      this.eraseArmed = false;
      const url = await this.on.range(a, b);
      if (url) {
        this.dl.href = url;
        this.dl.hidden = false;
      }
    });
    this.bar.addEventListener("wheel", (e) => {
      e.preventDefault();
      // Zoom around the instant under the pointer.
      this.mid = this.x2t(e.clientX);
      this.level = Math.max(0, Math.min(LEVELS.length - 1, this.level + (e.deltaY < 0 ? 1 : -1)));
      this.load();
    }, { passive: false });
    this.bar.addEventListener("keydown", (e) => {
      if (e.key === "ArrowLeft") this.shift(-0.25);
      if (e.key === "ArrowRight") this.shift(0.25);
      if (e.key === "+") this.zoom(this.level + 1);
      if (e.key === "-") this.zoom(this.level - 1);
    });
  }

  /** Keeps the picked range from retention. */
  async keep() {
    if (!this.picked) return;
    const [from, to] = this.picked;
    this.keepBtn.disabled = true;
    try {
      const r = await this.on.keep(from, to, this.keepNote.value);
      this.keepNote.value = "";
      this.keepBox.hidden = true;
      await this.load();
      this.note.textContent = t("kept", r.segments, (r.bytes / 1e6).toFixed(1));
    } catch (e) {
      this.note.textContent = e.message;
    } finally {
      this.keepBtn.disabled = false;
    }
  }

  /** Deletes the picked range's recording: a first click asks, a second (within 5 s) does it. */
  async erase() {
    if (!this.picked) return;
    if (!this.eraseArmed) {
      this.eraseArmed = true;
      this.eraseBtn.textContent = t("erase_sure");
      setTimeout(() => {
        if (this.eraseArmed) {
          this.eraseArmed = false;
          this.eraseBtn.textContent = t("erase");
        }
      }, 5000);
      return;
    }
    this.eraseArmed = false;
    const [from, to] = this.picked;
    this.eraseBtn.disabled = true;
    try {
      const r = await this.on.erase(from, to);
      await this.load();
      this.note.textContent = t("erased", r.segments, (r.bytes / 1e6).toFixed(1));
    } catch (e) {
      this.note.textContent = e.message;
      this.eraseBtn.textContent = t("erase");
    } finally {
      this.eraseBtn.disabled = false;
    }
  }

  /** The holds overlapping the view: a list, each with its release button for operators. */
  showHolds(holds, fmt) {
    if (!holds.length) {
      this.holdList.replaceChildren();
      return;
    }
    const rows = holds.map((k) => h("div", { class: "row tl-hold-row", dataset: { hold: k.id } },
      h("span", { class: "tl-hold-mark" }),
      h("span", {}, `${fmt(k.from)} — ${fmt(k.to)}`),
      k.note ? h("b", {}, k.note) : "",
      h("span", { class: "muted" }, k.created_by),
      this.on.release ? h("button", { onclick: async (e) => {
        e.target.disabled = true;
        try {
          await this.on.release(k.id);
          await this.load();
        } catch (err) {
          this.note.textContent = err.message;
          e.target.disabled = false;
        }
      } }, t("release")) : ""));
    this.holdList.replaceChildren(h("h3", {}, t("holds")), ...rows);
  }

  place(el, a, b) {
    const f = this.from();
    const s = this.span();
    const l = Math.max(0, (a - f) / s);
    const r = Math.min(1, (b - f) / s);
    el.style.left = `${(l * 100).toFixed(3)}%`;
    el.style.width = `${Math.max(0.15, (r - l) * 100).toFixed(3)}%`;
  }

  mark(secs) {
    this.cursor && this.cursor.remove();
    this.cursor = h("div", { class: "tl-cursor" });
    this.place(this.cursor, secs, secs);
    this.bar.append(this.cursor);
  }

  async load() {
    this.zoomButtons.forEach((b, i) => b.classList.toggle("on", i === this.level));
    const from = this.from();
    const to = from + this.span();
    const fmt = (s, o) => new Date(s * 1000).toLocaleString(lang === "zh" ? "zh-CN" : undefined, o);
    this.label.textContent = `${fmt(from)} — ${fmt(to)}`;
    this.dl.hidden = true;
    this.keepBox.hidden = true;
    this.eraseBtn.hidden = true;
    this.picked = null;
    const seq = (this.seq = (this.seq || 0) + 1);
    const level = this.level;
    let spans = [];
    let events = [];
    let gaps = [];
    const holds = new Map();
    try {
      // Long ranges come in pages (`next`); a month of one-minute segments is a few.
      let at = from;
      for (let page = 0; page < 10; page++) {
        const r = await api("GET", `/api/v1/devices/${encodeURIComponent(this.lc)}/channels/${this.ch}/recordings?from=${at.toFixed(3)}&to=${to.toFixed(3)}`);
        spans = spans.concat(r.spans);
        gaps = gaps.concat(r.gaps);
        for (const k of r.holds || []) holds.set(k.id, k);
        if (page === 0) events = r.events;
        if (r.next == null) break;
        at = r.next;
      }
    } catch (e) {
      this.note.textContent = e.message;
      return;
    }
    if (seq !== this.seq) return;
    const parts = [];
    for (const s of spans) {
      const el = h("div", { class: "tl-span", title: `${fmt(s.from)} — ${fmt(s.to)}` });
      this.place(el, s.from, s.to);
      parts.push(el);
    }
    for (const ev of events) {
      const el = h("div", { class: "tl-event", title: `${fmt(ev.at)} ${ev.data && ev.data.desc ? ev.data.desc : ev.kind}` });
      this.place(el, ev.at, ev.at);
      parts.push(el);
    }
    for (const k of holds.values()) {
      const el = h("div", { class: "tl-hold", title: `${t("kept_range")}: ${fmt(k.from)} — ${fmt(k.to)}${k.note ? ` · ${k.note}` : ""}` });
      this.place(el, k.from, k.to);
      parts.push(el);
    }
    this.bar.replaceChildren(...parts);
    // Which zoom level the bar shows (set once drawn, for scripts and tests).
    this.bar.dataset.level = String(level);
    this.bar.dataset.holds = String(holds.size);
    this.showHolds([...holds.values()], fmt);
    this.bar.dataset.spans = String(spans.length);
    this.note.textContent = spans.length ? t("tl_summary", spans.length, gaps.length, events.length) : t("nothing_recorded");
    this.ticks(from, to);
  }

  ticks(from, to) {
    const span = to - from;
    const steps = [60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400];
    const step = steps.find((s) => span / s <= 8) || 7 * 86400;
    const out = [];
    const zone = new Date().getTimezoneOffset() * 60;
    for (let s = Math.ceil((from - zone) / step) * step + zone; s <= to; s += step) {
      const el = h("span", {}, new Date(s * 1000).toLocaleString(lang === "zh" ? "zh-CN" : undefined,
        step >= 86400 ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" }));
      el.style.left = `${(((s - from) / span) * 100).toFixed(2)}%`;
      out.push(el);
    }
    this.axis.replaceChildren(...out);
  }
}
