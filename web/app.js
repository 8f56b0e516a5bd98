// The ivr console: one page per route (the cloud serves this shell for
// each), built from the JSON API with the login cookie. Plain ES modules,
// no build step; every device- or user-supplied string is put in the page
// as text (dom.js), never as HTML.

import { api, allDevices } from "./api.js";
import { h, table } from "./dom.js";
import { t, when, switchLang, lang } from "./i18n.js";
import { LivePlayer } from "./player.js";
import { RecordingPlayer } from "./playback.js";
import { Timeline } from "./timeline.js";

const main = document.getElementById("main");
const enc = encodeURIComponent;
let me = null;

const canControl = () => me && (me.role === "operator" || me.role === "admin");
const isAdmin = () => me && me.role === "admin";

function show(title, ...body) {
  document.title = `${title} · ivr`;
  main.replaceChildren(h("h1", {}, title), ...body);
}

function fail(e) {
  main.append(h("p", { class: "error", role: "alert" }, e.message || String(e)));
}

function flash(where, text, bad) {
  const p = h("p", { class: bad ? "error" : "ok", role: bad ? "alert" : "status" }, text);
  where.append(p);
  setTimeout(() => p.remove(), bad ? 8000 : 3000);
}

function deviceLink(lc, label) {
  return h("a", { href: `/devices/${enc(lc)}` }, label ?? lc);
}

function channelLink(lc, ch, label) {
  return h("a", { href: `/devices/${enc(lc)}/channels/${ch}` }, label ?? `${lc} · ${t("channel")} ${ch}`);
}

function dot(online) {
  return h("span", { class: online ? "dot on" : "dot off", title: t(online ? "online" : "offline") });
}

function picture(ev) {
  const img = h("img", { class: "thumb", alt: t("picture"), loading: "lazy", src: `/api/v1/events/${ev.id}/picture` });
  img.addEventListener("error", () => img.remove());
  return img;
}

// ---------- pages ----------

async function loginPage() {
  const next = new URLSearchParams(location.search).get("next");
  const name = h("input", { name: "name", autocomplete: "username", required: true, autofocus: true });
  const pw = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const msg = h("p", { class: "error", role: "alert", hidden: true });
  const form = h("form", { class: "login" },
    h("label", {}, t("name"), name), h("label", {}, t("password"), pw), msg,
    h("button", { type: "submit" }, t("login")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.hidden = true;
    try {
      await api("POST", "/api/v1/login", { name: name.value, password: pw.value });
      // Only a path of this site: `next` comes from the address bar.
      location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
    } catch (err) {
      msg.textContent = err.status === 401 ? t("wrong_login") : err.message;
      msg.hidden = false;
    }
  });
  show(t("login"), form);
}

async function dashboard() {
  const [devices, alarms, cluster] = await Promise.all([
    allDevices(), api("GET", "/api/v1/events?type=alarm&limit=8"),
    isAdmin() ? api("GET", "/api/v1/nodes") : null]);
  const on = devices.filter((d) => d.online).length;
  const chans = devices.flatMap((d) => d.channels);
  const card = (n, label, cls) => h("div", { class: "card " + (cls || "") }, h("b", {}, String(n)), h("span", {}, label));
  show(t("dashboard"),
    h("div", { class: "cards" },
      card(on, t("online"), "good"), card(devices.length - on, t("offline"), devices.length - on ? "warn" : ""),
      card(chans.filter((c) => c.state === 2).length, t("live_channels")),
      card(chans.filter((c) => c.record_session).length, t("recording"))),
    h("h2", {}, t("recent_alarms")),
    alarms.length
      ? h("div", { class: "alarms" }, alarms.map((ev) => h("div", { class: "alarm" },
        picture(ev),
        h("div", {}, h("b", {}, ev.data.desc ?? ev.kind), h("br"),
          ev.channel != null ? channelLink(ev.login_code, ev.channel) : deviceLink(ev.login_code), h("br"),
          h("span", { class: "muted" }, when(ev.at))))))
      : h("p", { class: "muted" }, t("no_alarms")),
    cluster ? nodesTable(cluster) : "");
}

/** The cluster's nodes (admins): which run, which stopped, who holds how
 * many devices, which version each runs (and a word while they differ). */
function nodesTable(cluster) {
  const nodes = cluster.nodes;
  const up = nodes.filter((n) => n.alive).length;
  const version = (v) => v || t("version_older");
  return h("section", { class: "nodes" },
    h("h2", {}, t("nodes_up", up, nodes.length)),
    cluster.mixed_versions
      ? h("p", { class: "note warn", dataset: { mixed: "1" } }, t("mixed_versions", cluster.mixed_versions.map(version).join(", ")))
      : "",
    table([t("node"), t("address"), t("devices_online"), t("version"), t("heartbeat"), t("state")], nodes, (n) => [
      [h("b", {}, n.id), n.this ? h("span", { class: "muted" }, " · " + t("node_this")) : ""],
      h("code", {}, n.url),
      String(n.devices_online),
      version(n.version),
      when(n.seen),
      [dot(n.alive), " ", t(n.alive ? "node_up" : "node_down")],
    ]));
}

async function devicesPage() {
  const [devices, groups] = await Promise.all([allDevices(), api("GET", "/api/v1/groups")]);
  const byCode = new Map(devices.map((d) => [d.login_code, d]));
  const rows = new Map();
  const row = (d) => {
    const r = h("li", { dataset: { code: d.login_code } }, dot(d.online), " ", deviceLink(d.login_code, d.name || d.login_code),
      " ", h("span", { class: "muted" }, d.name ? d.login_code : ""), " ",
      h("span", { class: "muted" }, d.channels.length === 1 ? t("one_channel") : t("n_channels", d.channels.length)));
    r.search = `${d.login_code} ${d.name}`.toLowerCase();
    (rows.get(d.login_code) || rows.set(d.login_code, []).get(d.login_code)).push(r);
    return r;
  };
  const grouped = new Set();
  const tree = h("div", { class: "tree" });
  for (const g of groups) {
    const members = g.devices.filter((lc) => byCode.has(lc));
    members.forEach((lc) => grouped.add(lc));
    tree.append(h("details", { open: true }, h("summary", {}, `${g.name} (${members.length})`),
      h("ul", {}, members.map((lc) => row(byCode.get(lc))))));
  }
  const rest = devices.filter((d) => !grouped.has(d.login_code));
  // Thousands of devices: the list is built once, off-screen, in one append.
  const ul = h("ul", {});
  const frag = document.createDocumentFragment();
  rest.forEach((d) => frag.append(row(d)));
  ul.append(frag);
  tree.append(groups.length ? h("details", { open: true }, h("summary", {}, `${t("ungrouped")} (${rest.length})`), ul) : ul);
  const search = h("input", { type: "search", placeholder: t("search"), "aria-label": t("search") });
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    for (const list of rows.values()) for (const r of list) r.hidden = q !== "" && !r.search.includes(q);
  });
  const tools = h("div", { class: "row" }, search);
  const inventory = h("section", { class: "inventory" });
  if (canControl() && devices.length) {
    const shown = () => devices.filter((d) => d.online && (rows.get(d.login_code) || []).some((r) => !r.hidden));
    tools.append(h("button", { onclick: (e) => netInventory(shown(), inventory, e.target) }, t("net_settings")));
  }
  show(`${t("devices")} (${devices.length})`, tools, inventory, devices.length ? tree : h("p", { class: "muted" }, t("no_devices")));
  // Live status: the event stream flips the dots.
  const es = new EventSource("/api/v1/stream");
  const flip = (online) => (m) => {
    const ev = JSON.parse(m.data);
    for (const r of rows.get(ev.login_code) || []) r.firstChild.className = online ? "dot on" : "dot off";
  };
  es.addEventListener("online", flip(true));
  es.addEventListener("offline", flip(false));
}

/** The network settings of every channel of `devices` (online ones), read
 * with GetNetConfig in batches of calls (`POST /api/v1/rpc`): a table of
 * the cameras' addresses, and the same as CSV. */
async function netInventory(devices, out, button) {
  const calls = devices.flatMap((d) => d.channels.map((c) => ({ device: d.login_code, method: "GetNetConfig", params: { channel: c.channel } })));
  out.replaceChildren();
  if (!calls.length) {
    out.append(h("p", { class: "muted" }, t("net_none")));
    return;
  }
  const bar = h("progress", { value: 0, max: calls.length });
  const said = h("span", { class: "muted" });
  out.append(h("h2", {}, t("net_settings")), h("div", { class: "row" }, bar, said));
  button.disabled = true;
  const results = [];
  try {
    for (let i = 0; i < calls.length; i += 200) {
      said.textContent = t("net_reading", Math.min(i + 200, calls.length), calls.length);
      const r = await api("POST", "/api/v1/rpc", { calls: calls.slice(i, i + 200) });
      results.push(...r.results.map((x, k) => ({ ...x, channel: calls[i + k].params.channel })));
      bar.value = results.length;
    }
  } catch (e) {
    out.append(h("p", { class: "error" }, e.message));
    return;
  } finally {
    button.disabled = false;
  }
  // One row per interface a camera reports (most report one).
  const lines = results.flatMap((r) => {
    const nics = r.status === 200 && Array.isArray(r.answer) && r.answer.length ? r.answer : [null];
    return nics.map((n) => ({ r, n: n || {} }));
  });
  const names = new Map(devices.map((d) => [d.login_code, d.name || ""]));
  const cols = ["device", "channel", "iface", "ip", "netmask", "gateway", "dhcp", "mac"];
  const cells = ({ r, n }) => [r.device, r.channel, n.name || "", n.ip || "", n.netmask || "", n.gateway || "",
    r.status === 200 ? (n.dhcp ? t("on") : t("off")) : "", n.mac || ""];
  const failed = results.filter((r) => r.status !== 200).length;
  said.textContent = t(results.length - failed === 1 ? "net_read_one" : "net_read", results.length - failed, failed);
  // The CSV keeps the login code in the first column (what scripts key
  // on) and adds the name the console shows.
  const csv = [[...cols, "error", "name"], ...lines.map((l) => [...cells(l), l.r.status === 200 ? "" : l.r.error, names.get(l.r.device)])]
    .map((row) => row.map((v) => `"${String(v).replaceAll('"', '""')}"`).join(",")).join("\r\n");
  const link = h("a", { href: URL.createObjectURL(new Blob([csv + "\r\n"], { type: "text/csv" })), download: "network.csv" }, t("csv"));
  out.append(link, table(cols.map((c) => t(c)), lines, (l) => {
    const c = cells(l);
    const name = names.get(l.r.device);
    c[0] = h("span", {}, deviceLink(l.r.device, name || l.r.device), name ? h("span", { class: "muted" }, ` ${l.r.device}`) : "");
    if (l.r.status !== 200) c[3] = h("span", { class: "error" }, l.r.error || String(l.r.status));
    return c;
  }));
}

async function devicePage(lc) {
  const d = await api("GET", `/api/v1/devices/${enc(lc)}`);
  const status = h("div");
  const info = table([t("name"), t("model"), t("firmware"), t("state"), t("last_seen"), t("created")], [d], (x) => [
    x.name || "—", x.hardware_model || "—", x.firmware_model || "—", h("span", {}, dot(x.online), " ", t(x.online ? "online" : "offline")),
    when(x.last_seen), when(x.created_at)]);
  const chans = h("div", { class: "channels" }, d.channels.map((c) => {
    const img = h("img", { class: "thumb", alt: "", loading: "lazy", src: `/api/v1/devices/${enc(lc)}/channels/${c.channel}/preview` });
    img.addEventListener("error", () => img.remove());
    const controls = canControl() ? h("div", { class: "row" },
      h("button", { onclick: () => act(status, () => api("POST", `/api/v1/devices/${enc(lc)}/rpc/RebootChannel`, { channel: c.channel })) }, t("reboot")))
      : null;
    return h("div", { class: "card" }, img, channelLink(lc, c.channel, `${t("channel")} ${c.channel}`),
      h("span", { class: "muted" }, ["offline", "online", "live"][c.state] || c.state), c.record_session ? h("span", { class: "rec" }, "● REC") : null, controls);
  }));
  const actions = h("div", { class: "row" });
  if (canControl()) {
    const name = h("input", { name: "name", value: d.name, "aria-label": t("name"), maxlength: 128 });
    const rename = h("form", { class: "row" }, name, h("button", { type: "submit" }, t("rename")));
    rename.addEventListener("submit", (e) => {
      e.preventDefault();
      act(status, async () => {
        await api("PATCH", `/api/v1/devices/${enc(lc)}`, { name: name.value });
        main.querySelector("h1").textContent = name.value || lc;
      });
    });
    actions.append(rename,
      h("button", { onclick: () => act(status, () => api("POST", `/api/v1/devices/${enc(lc)}/events/SyncTime`, { datetime: localIso(), offset: 0 })) }, t("sync_time")));
    // The catalogue's newest image for this hardware, when it is not what runs.
    const fw = await api("GET", "/api/v1/firmware").catch(() => []);
    const newest = offered(fw).get(d.hardware_model);
    if (newest && newest.firmware_model !== d.firmware_model) {
      actions.append(h("button", { onclick: () => {
        if (confirm(t("confirm_upgrade", newest.firmware_model))) act(status, () => api("POST", `/api/v1/devices/${enc(lc)}/events/UpgradeFirmware`));
      } }, t("upgrade", newest.firmware_model)));
    }
  }
  if (isAdmin()) {
    actions.append(h("button", { class: "danger", onclick: async () => {
      if (!confirm(t("confirm_delete", lc))) return;
      await act(status, () => api("DELETE", `/api/v1/devices/${enc(lc)}`));
      location.assign("/devices");
    } }, t("delete_device")));
  }
  show(d.name || lc, h("p", { class: "muted" }, lc), info, actions, status, h("h2", {}, t("channels")), chans);
}

/** A phone: the sub-stream is enough for its screen (and its data plan). */
function narrow() {
  return window.innerWidth < 700 ? "sd" : "hd";
}

/** The device's clock as it shows it: local time, no zone. */
function localIso() {
  const n = new Date();
  const p = (x) => String(x).padStart(2, "0");
  return `${n.getFullYear()}-${p(n.getMonth() + 1)}-${p(n.getDate())}T${p(n.getHours())}:${p(n.getMinutes())}:${p(n.getSeconds())}`;
}

async function act(where, f) {
  try {
    await f();
    flash(where, t("done"));
  } catch (e) {
    flash(where, e.message, true);
  }
}

async function channelPage(lc, ch) {
  const d = await api("GET", `/api/v1/devices/${enc(lc)}`);
  const status = h("div");
  const tile = h("div", { class: "tile big", id: "player" });
  const side = h("div", { class: "side" });
  const at = new URLSearchParams(location.search).get("t");
  const back = h("button", { hidden: true, onclick: () => { back.hidden = true; playbackNote.textContent = ""; if (player) player.close(); player = new LivePlayer(tile, lc, ch, narrow()); } }, t("back_live"));
  const playbackNote = h("span", { class: "muted" });
  let player = null;
  // Without `to`, playback goes on through what was recorded after `from`.
  const playback = async (from, to) => {
    if (player) player.close();
    tile.replaceChildren();
    delete tile.ivrPlayback;
    const p = new RecordingPlayer(tile, lc, ch, {
      time: (s) => {
        if (player !== p) return;
        playbackNote.textContent = t("playing_at", when(s));
        tile.dataset.playingAt = s.toFixed(3);
        tl.mark(s);
      },
      end: () => { if (player === p) playbackNote.textContent = t("playback_end"); },
      error: (m) => { if (player === p) flash(status, m, true); },
    });
    player = p;
    back.hidden = false;
    return p.play(from, to);
  };
  if (canControl()) side.append(ptzPad(lc, ch, status), await presets(lc, ch, status), await tours(lc, ch, status), recordBox(lc, ch, d, status), await detectBox(lc, ch, status));
  else side.append(h("p", { class: "muted" }, t("viewer_only")));
  const tl = new Timeline(lc, ch, {
    play: (from) => playback(from),
    range: async (from, to) => {
      const r = await playback(from, to);
      return r && r.urls.mp4;
    },
    ...(canControl() ? {
      keep: (from, to, note) => api("POST", `/api/v1/devices/${enc(lc)}/channels/${ch}/holds`, { from, to, note }),
      release: (id) => api("DELETE", `/api/v1/devices/${enc(lc)}/channels/${ch}/holds/${id}`),
    } : {}),
    ...(isAdmin() ? {
      erase: (from, to) => api("DELETE", `/api/v1/devices/${enc(lc)}/channels/${ch}/recordings?from=${from.toFixed(3)}&to=${to.toFixed(3)}`),
    } : {}),
  });
  show(`${d.name || lc} · ${t("channel")} ${ch}`, h("p", {}, deviceLink(lc), " ", back, " ", playbackNote),
    h("div", { class: "split" }, tile, side), status, h("h2", {}, t("timeline")), tl.el);
  if (at) {
    const s = Number(at);
    tl.centre(s);
    playback(s - 5);
  } else {
    player = new LivePlayer(tile, lc, ch, narrow());
  }
  tl.load();
}

function ptzPad(lc, ch, status) {
  const speed = h("input", { type: "range", min: 1, max: 100, value: 50, "aria-label": t("speed") });
  const send = (op) => api("POST", `/api/v1/devices/${enc(lc)}/events/CtrlPTZ`, { channel: ch, op, value: Number(speed.value) })
    .catch((e) => flash(status, e.message, true));
  // Press to move, release to stop, as a joystick.
  const b = (op, label) => {
    const el = h("button", { class: "ptz", "aria-label": op, dataset: { op } }, label);
    el.addEventListener("pointerdown", () => send(op));
    el.addEventListener("pointerup", () => send("stop"));
    el.addEventListener("pointerleave", (e) => { if (e.buttons) send("stop"); });
    el.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") send(op); });
    el.addEventListener("keyup", (e) => { if (e.key === "Enter" || e.key === " ") send("stop"); });
    return el;
  };
  return h("fieldset", { class: "ptzpad" }, h("legend", {}, t("ptz")),
    h("div", { class: "pad" },
      b("upleft", "↖"), b("up", "↑"), b("upright", "↗"),
      b("left", "←"), b("stop", "■"), b("right", "→"),
      b("downleft", "↙"), b("down", "↓"), b("downright", "↘")),
    h("label", {}, t("speed"), speed),
    h("div", { class: "row" }, t("zoom"), b("zoomout", "−"), b("zoomin", "+")),
    h("div", { class: "row" }, t("focus"), b("focusnear", "−"), b("focusfar", "+")),
    h("div", { class: "row" }, t("iris"), b("irisclose", "−"), b("irisopen", "+")));
}

async function presets(lc, ch, status) {
  const box = h("fieldset", {}, h("legend", {}, t("presets")));
  try {
    const r = await api("POST", `/api/v1/devices/${enc(lc)}/rpc/GetPTZPresetList`, { channel: ch });
    const list = (r && (r.presets || r.list || r.PresetList)) || (Array.isArray(r) ? r : []);
    if (!list.length) box.append(h("p", { class: "muted" }, t("no_presets")));
    for (const p of list) {
      const token = p.token ?? p.Token ?? String(p.id ?? "");
      box.append(h("button", { onclick: () => act(status, () => api("POST", `/api/v1/devices/${enc(lc)}/events/GotoPTZPreset`, { channel: ch, token })) },
        p.name ?? p.Name ?? token));
    }
  } catch (e) {
    box.append(h("p", { class: "muted" }, e.message));
  }
  return box;
}

async function tours(lc, ch, status) {
  const box = h("fieldset", {}, h("legend", {}, t("tours")));
  try {
    const list = await api("POST", `/api/v1/devices/${enc(lc)}/rpc/GetPTZPresetTourList`, { channel: ch });
    if (!Array.isArray(list) || !list.length) box.append(h("p", { class: "muted" }, t("no_tours")));
    for (const tour of Array.isArray(list) ? list : []) {
      const go = (op) => act(status, () => api("POST", `/api/v1/devices/${enc(lc)}/events/CtrlPTZPresetTour`, { channel: ch, token: tour.token, op }));
      box.append(h("div", { class: "row" }, tour.name ?? tour.token, h("button", { onclick: () => go("start") }, "▶"), h("button", { onclick: () => go("stop") }, "■")));
    }
  } catch (e) {
    box.append(h("p", { class: "muted" }, e.message));
  }
  return box;
}

/** Seconds after midnight as `HH:MM` (86400, the end of the day, as 00:00). */
function hhmm(secs) {
  const m = Math.floor((secs % 86400) / 60);
  return `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
}

/** `HH:MM` as seconds after midnight. */
function secsOf(v) {
  const [hh, mm] = (v || "00:00").split(":").map(Number);
  return (hh * 60 + mm) * 60;
}

/** The intrusion area: drawn on the channel's latest picture with the
 * mouse (or a finger), or typed as left/top/right/bottom percentages. */
function areaPicker(lc, ch, rect) {
  const pct = (label, v) => h("input", { type: "number", min: 0, max: 100, value: v, "aria-label": label, dataset: { edge: label } });
  const r = rect || { ulx: 10, uly: 10, drx: 90, dry: 90 };
  const edges = [pct("left", r.ulx), pct("top", r.uly), pct("right", r.drx), pct("bottom", r.dry)];
  const box = h("div", { class: "rect" });
  const img = h("img", { alt: "", draggable: false, src: `/api/v1/devices/${enc(lc)}/channels/${ch}/preview` });
  img.addEventListener("error", () => img.remove());
  const pad = h("div", { class: "area", title: t("draw_area") }, img, box);
  const read = () => {
    const [l, tp, rt, b] = edges.map((e) => Math.max(0, Math.min(100, Math.round(Number(e.value) || 0))));
    return { l: Math.min(l, rt), t: Math.min(tp, b), r: Math.max(l, rt), b: Math.max(tp, b) };
  };
  const draw = () => {
    const a = read();
    Object.assign(box.style, { left: a.l + "%", top: a.t + "%", width: a.r - a.l + "%", height: a.b - a.t + "%" });
  };
  edges.forEach((e) => e.addEventListener("input", draw));
  let from = null;
  const at = (e) => {
    const b = pad.getBoundingClientRect();
    return [
      Math.max(0, Math.min(100, Math.round(((e.clientX - b.left) / b.width) * 100))),
      Math.max(0, Math.min(100, Math.round(((e.clientY - b.top) / b.height) * 100))),
    ];
  };
  const set = (p, q) => {
    [edges[0].value, edges[1].value, edges[2].value, edges[3].value] = [Math.min(p[0], q[0]), Math.min(p[1], q[1]), Math.max(p[0], q[0]), Math.max(p[1], q[1])];
    draw();
  };
  pad.addEventListener("pointerdown", (e) => { e.preventDefault(); from = at(e); pad.setPointerCapture(e.pointerId); set(from, from); });
  pad.addEventListener("pointermove", (e) => { if (from) set(from, at(e)); });
  pad.addEventListener("pointerup", (e) => { if (from) set(from, at(e)); from = null; });
  draw();
  return {
    el: h("div", {}, h("p", { class: "muted" }, t("draw_area")), pad, h("div", { class: "edges" }, edges.map((e) => h("label", {}, t("edge_" + e.dataset.edge), e)))),
    rect: () => {
      const a = read();
      return { ulx: a.l, uly: a.t, urx: a.r, ury: a.t, dlx: a.l, dly: a.b, drx: a.r, dry: a.b };
    },
  };
}

/** Motion detection and the intrusion area: sent to the device, which
 * keeps them; IVR RPC cannot read them back, so the forms show what was
 * last applied through the cloud (by whom, when). */
async function detectBox(lc, ch, status) {
  const last = await api("GET", `/api/v1/devices/${enc(lc)}/channels/${ch}/detection`).catch(() => ({}));
  const num = (label, v, min, max) => h("label", {}, label, h("input", { type: "number", value: v, min, max, "aria-label": label }));
  const form = (kind, method, title, withRect) => {
    const was = last[kind];
    const c = (was && was.config) || {};
    const on = h("input", { type: "checkbox", "aria-label": t("enable"), checked: !!c.enable });
    const sens = num(t("sensitivity"), c.sensitivity ?? 50, 0, 100);
    const delay = num(t("delay"), c.delay ?? 5, 0, 86400);
    const from = h("input", { type: "time", value: hhmm(c.start ?? 0), "aria-label": t("armed_from") });
    const to = h("input", { type: "time", value: hhmm(c.end ?? 86400), "aria-label": t("armed_to") });
    // All day unless a window was set: two times of 00:00 read as nothing.
    const allDay = h("input", { type: "checkbox", "aria-label": t("all_day"), checked: (c.start ?? 0) === 0 && (c.end ?? 86400) === 86400 });
    const hours = h("span", { class: "row" }, from, "–", to);
    const showHours = () => { hours.hidden = allDay.checked; };
    allDay.addEventListener("change", showHours);
    showHours();
    const area = withRect ? areaPicker(lc, ch, c.rect) : null;
    const note = h("p", { class: "muted" }, was ? t("applied_by", was.set_by, when(was.set_at)) : t("never_applied"));
    const f = h("form", { dataset: { kind } }, note, h("label", {}, on, t("enable")), sens, delay,
      h("div", { class: "armed" }, t("armed"), h("span", { class: "row" }, h("label", {}, allDay, t("all_day")), hours)), area && area.el, h("button", { type: "submit" }, t("apply")));
    f.addEventListener("submit", (e) => {
      e.preventDefault();
      // A window that ends at midnight ends at the day's end (86400).
      const start = allDay.checked ? 0 : secsOf(from.value);
      const end = allDay.checked ? 86400 : secsOf(to.value) || 86400;
      const p = { channel: ch, enable: on.checked, sensitivity: Number(sens.lastChild.value), delay: Number(delay.lastChild.value), start, end };
      if (area) p.rect = area.rect();
      act(status, async () => {
        await api("POST", `/api/v1/devices/${enc(lc)}/rpc/${method}`, p);
        const now = (await api("GET", `/api/v1/devices/${enc(lc)}/channels/${ch}/detection`))[kind];
        if (now) note.textContent = t("applied_by", now.set_by, when(now.set_at));
      });
    });
    return h("details", { open: !!(was && c.enable) }, h("summary", {}, title, " ", h("span", { class: "muted" }, was ? (c.enable ? t("on") : t("off")) : "")), f);
  };
  return h("fieldset", { class: "detect" }, h("legend", {}, t("detection")),
    form("motion", "AlarmMoveDetectConfig", t("motion"), false), form("intrusion", "AlarmRectIntrusionDetectConfig", t("intrusion"), true));
}

/** The policy's weekdays, 1 (Monday) … 7, in the reader's language. */
function dayNames() {
  const f = new Intl.DateTimeFormat(lang === "zh" ? "zh-CN" : undefined, { weekday: "short", timeZone: "UTC" });
  // 2024-01-01 was a Monday.
  return [1, 2, 3, 4, 5, 6, 7].map((d) => f.format(new Date(Date.UTC(2024, 0, d))));
}

/** The window a new schedule starts with. */
const WORKDAY = { days: [1, 2, 3, 4, 5], from: "08:00", to: "18:00" };

/** One schedule window: days, from, to, and a button that removes it. */
function windowRow(w) {
  const names = dayNames();
  const row = h("div", { class: "row window" },
    h("span", { class: "days" }, names.map((n, i) => h("label", { class: "day" },
      h("input", { type: "checkbox", value: String(i + 1), checked: w.days.includes(i + 1) }), n))),
    h("label", {}, t("win_from"), h("input", { type: "time", name: "from", value: w.from, required: true })),
    h("label", {}, t("win_to"), h("input", { type: "time", name: "to", value: w.to, required: true })));
  row.append(h("button", { type: "button", class: "ghost", onclick: () => row.remove() }, t("remove")));
  return row;
}

function readWindow(row) {
  return {
    days: [...row.querySelectorAll("input[type=checkbox]:checked")].map((x) => Number(x.value)),
    from: row.querySelector("input[name=from]").value,
    to: row.querySelector("input[name=to]").value,
  };
}

function recordBox(lc, ch, d, status) {
  const c = d.channels.find((x) => x.channel === ch);
  const path = `/api/v1/devices/${enc(lc)}/channels/${ch}`;
  // What the cloud has, fields this form does not show included (a save
  // sends them back unchanged: a PUT replaces the whole policy).
  let policy = { mode: "off" };
  const modes = ["off", "continuous", "alarm", "schedule"];
  const mode = h("select", { "aria-label": t("mode") }, modes.map((m) => h("option", { value: m }, t(`mode_${m}`))));
  const pre = h("input", { type: "number", min: 0, max: 300, value: 0, "aria-label": t("prerecord") });
  const post = h("input", { type: "number", min: 0, max: 3600, value: 30, "aria-label": t("post") });
  const keep = h("input", { type: "number", min: 0, placeholder: "∞", "aria-label": t("retention") });
  const here = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const tzList = h("datalist", { id: `tz-${ch}` }, ["UTC", ...zones].map((z) => h("option", { value: z })));
  const tz = h("input", { type: "text", list: `tz-${ch}`, value: here, size: 18, "aria-label": t("timezone") });
  const windows = h("div", { class: "windows" });
  const postLabel = h("label", {}, t("post"), post);
  const sched = h("div", { class: "schedule" }, windows,
    h("div", { class: "row" },
      h("button", { type: "button", onclick: () => windows.append(windowRow(WORKDAY)) }, t("add_window")),
      h("label", {}, t("timezone"), tz, tzList)));
  const show = () => {
    sched.hidden = mode.value !== "schedule";
    postLabel.hidden = mode.value !== "alarm";
    if (mode.value === "schedule" && !windows.children.length) {
      windows.append(windowRow(WORKDAY));
    }
  };
  mode.addEventListener("change", show);
  api("GET", `${path}/record-policy`).then((p) => {
    policy = p;
    if (modes.includes(p.mode)) mode.value = p.mode;
    pre.value = p.prerecord_seconds || 0;
    if (p.post_seconds != null) post.value = p.post_seconds;
    keep.value = p.retention_days || "";
    if (p.timezone) tz.value = p.timezone;
    windows.replaceChildren(...(p.schedule || []).map(windowRow));
    show();
  }).catch(() => show());
  const save = () => act(status, async () => {
    const body = {
      ...policy, mode: mode.value, prerecord_seconds: Number(pre.value), post_seconds: Number(post.value),
      retention_days: keep.value === "" ? null : Number(keep.value),
      schedule: [...windows.querySelectorAll(".window")].map(readWindow),
    };
    if (tz.value.trim()) body.timezone = tz.value.trim(); else delete body.timezone;
    policy = await api("PUT", `${path}/record-policy`, body);
  });
  show();
  return h("fieldset", { class: "policy" }, h("legend", {}, t("recording")),
    h("div", { class: "row" },
      h("button", { onclick: () => act(status, () => api("POST", `${path}/recording`, {})) }, t("record_start")),
      h("button", { onclick: () => act(status, () => api("DELETE", `${path}/recording`)) }, t("record_stop")),
      c && c.record_session ? h("span", { class: "rec" }, "● REC") : null),
    h("div", { class: "row" }, h("label", {}, t("policy"), mode), h("label", {}, t("prerecord"), pre), postLabel,
      h("label", {}, t("retention"), keep)),
    sched,
    h("div", { class: "row" }, h("button", { class: "save-policy", onclick: save }, t("save"))));
}

async function livePage() {
  const devices = await allDevices();
  const chans = devices.flatMap((d) => d.channels.map((c) => ({ lc: d.login_code, ch: c.channel, label: `${d.name || d.login_code} · ${c.channel}` })));
  const saved = JSON.parse(localStorage.getItem("ivr.grid") || "{}");
  let n = [1, 4, 9, 16].includes(saved.n) ? saved.n : 4;
  let picks = Array.isArray(saved.picks) ? saved.picks : [];
  const grid = h("div", { class: "grid" });
  const players = [];
  const remember = () => localStorage.setItem("ivr.grid", JSON.stringify({ n, picks }));
  const draw = () => {
    players.forEach((p) => p && p.close());
    players.length = 0;
    grid.style.setProperty("--cols", String(Math.sqrt(n)));
    grid.replaceChildren();
    for (let i = 0; i < n; i++) {
      const tile = h("div", { class: "tile", dataset: { tile: i } });
      const sel = h("select", { "aria-label": `${t("channel")} ${i + 1}` }, h("option", { value: "" }, t("choose")),
        chans.map((c) => h("option", { value: `${c.lc}\u0000${c.ch}` }, c.label)));
      const pick = picks[i];
      if (pick) sel.value = `${pick.lc}\u0000${pick.ch}`;
      const play = () => {
        if (players[i]) players[i].close();
        const [lc, ch] = sel.value.split("\u0000");
        picks[i] = sel.value ? { lc, ch: Number(ch) } : null;
        remember();
        // Tiles use the sub-stream: sixteen main streams would not fit.
        players[i] = sel.value ? new LivePlayer(box, lc, Number(ch), n > 1 ? "sd" : "hd") : null;
        if (!sel.value) box.replaceChildren();
      };
      sel.addEventListener("change", play);
      const box = h("div", { class: "tile-box" });
      tile.append(box, sel);
      grid.append(tile);
      if (pick && chans.some((c) => c.lc === pick.lc && c.ch === pick.ch)) play();
    }
  };
  const sizes = h("div", { class: "row" }, t("grid"), [1, 4, 9, 16].map((k) =>
    h("button", { class: k === n ? "on" : "", onclick: (e) => {
      n = k;
      remember();
      sizes.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b === e.target));
      draw();
    } }, String(k))));
  show(t("live"), sizes, grid);
  draw();
}

async function eventsPage() {
  const q = new URLSearchParams(location.search);
  const devices = await allDevices();
  const dev = h("select", { name: "login_code", "aria-label": t("devices") }, h("option", { value: "" }, t("all")),
    devices.map((d) => h("option", { value: d.login_code }, d.name || d.login_code)));
  dev.value = q.get("login_code") || "";
  const kind = h("select", { name: "type", "aria-label": t("type") }, ["", "alarm", "online", "offline", "channel_state", "record_policy", "session_replaced"]
    .map((k) => h("option", { value: k }, k || t("all"))));
  kind.value = q.get("type") || "";
  const since = h("input", { type: "datetime-local", name: "since", "aria-label": t("since") });
  if (q.get("since")) since.value = toLocalInput(Number(q.get("since")));
  const form = h("form", { class: "row" }, dev, kind, since, h("button", { type: "submit" }, t("filter")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (dev.value) p.set("login_code", dev.value);
    if (kind.value) p.set("type", kind.value);
    if (since.value) p.set("since", String(Math.floor(new Date(since.value).getTime() / 1000)));
    location.assign("/events?" + p);
  });
  const api_q = new URLSearchParams(q);
  api_q.set("limit", "200");
  const evs = await api("GET", "/api/v1/events?" + api_q);
  show(t("events"), form, table([t("when"), t("device"), t("channel"), t("type"), t("detail"), t("picture"), ""], evs, (ev) => [
    when(ev.at), deviceLink(ev.login_code), ev.channel ?? "—", ev.kind,
    ev.data && typeof ev.data === "object" ? (ev.data.desc ?? ev.data.reason ?? JSON.stringify(ev.data)) : "",
    ev.kind === "alarm" ? picture(ev) : "",
    ev.channel != null && ev.kind === "alarm" ? h("a", { href: `/devices/${enc(ev.login_code)}/channels/${ev.channel}?t=${ev.at}` }, t("play_at")) : "",
  ]));
}

function toLocalInput(secs) {
  const d = new Date(secs * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

function grantText(g) {
  return g === "*" ? "*" : (g || []).join(", ");
}

function grantOf(s) {
  s = s.trim();
  return s === "*" ? "*" : s.split(",").map((x) => x.trim()).filter(Boolean);
}

async function usersPage() {
  const users = await api("GET", "/api/v1/users");
  const status = h("div");
  const f = {
    name: h("input", { name: "name", required: true, "aria-label": t("name"), placeholder: t("name") }),
    password: h("input", { name: "password", type: "password", required: true, minlength: 8, autocomplete: "new-password", "aria-label": t("password"), placeholder: t("password") }),
    role: h("select", { name: "role", "aria-label": t("role") }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r))),
    devices: h("input", { name: "devices", "aria-label": t("devices_all"), placeholder: t("devices_all") }),
    groups: h("input", { name: "groups", "aria-label": t("groups"), placeholder: t("groups") }),
  };
  const form = h("form", { class: "row" }, Object.values(f), h("button", { type: "submit" }, t("add")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/v1/users", { name: f.name.value, password: f.password.value, role: f.role.value,
        devices: grantOf(f.devices.value), groups: grantOf(f.groups.value) === "*" ? [] : grantOf(f.groups.value) });
      location.reload();
    } catch (err) {
      flash(status, err.message, true);
    }
  });
  show(t("users"), form, status, table([t("name"), t("role"), t("devices"), t("groups"), t("created"), ""], users, (u) => [
    u.name, u.role, grantText(u.devices), u.groups.join(", "), when(u.created_at),
    h("button", { class: "danger", onclick: async () => {
      if (!confirm(t("confirm_delete", u.name))) return;
      await act(status, () => api("DELETE", `/api/v1/users/${enc(u.name)}`));
      location.reload();
    } }, t("delete")),
  ]));
}

async function tokensPage() {
  const tokens = await api("GET", "/api/v1/tokens");
  const status = h("div");
  const f = {
    name: h("input", { name: "name", required: true, "aria-label": t("name"), placeholder: t("name") }),
    role: h("select", { name: "role", "aria-label": t("role") }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r))),
    devices: h("input", { name: "devices", "aria-label": t("devices_all"), placeholder: t("devices_all") }),
    expires: h("input", { name: "expires", placeholder: "30d", "aria-label": t("expires") }),
  };
  const shown = h("div");
  const form = h("form", { class: "row" }, Object.values(f), h("button", { type: "submit" }, t("create")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await api("POST", "/api/v1/tokens", { name: f.name.value, role: f.role.value, devices: grantOf(f.devices.value),
        expires: f.expires.value.trim() || null });
      shown.replaceChildren(h("p", { class: "ok" }, t("token_once")), h("code", { class: "secret" }, r.token));
    } catch (err) {
      flash(status, err.message, true);
    }
  });
  show(t("tokens"), form, shown, status, table(["id", t("name"), t("role"), t("devices"), t("expires"), t("created"), ""], tokens, (k) => [
    k.id, k.name, k.role, grantText(k.devices), k.expires ? when(k.expires) : t("never"), `${when(k.created_at)} · ${k.created_by}`,
    h("button", { class: "danger", onclick: async () => {
      await act(status, () => api("DELETE", `/api/v1/tokens/${enc(k.id)}`));
      location.reload();
    } }, t("revoke")),
  ]));
}

async function auditPage() {
  const before = new URLSearchParams(location.search).get("before");
  const log = await api("GET", "/api/v1/audit?limit=200" + (before ? "&before=" + enc(before) : ""));
  const more = log.length === 200 ? h("a", { href: `/audit?before=${log[log.length - 1].id}` }, t("next")) : null;
  show(t("audit"), table([t("when"), t("actor"), t("action"), t("target"), t("from"), t("detail")], log, (e) => [
    when(e.at), e.actor, e.action, e.target, e.addr || "—", h("code", {}, JSON.stringify(e.detail)),
  ]), more);
}

// ---------- the frame ----------

/** The image GetFirmware offers each hardware model: the newest upload,
 * the greater version on a tie (the store's order). */
function offered(images) {
  const out = new Map();
  for (const f of images) {
    const n = out.get(f.hardware_model);
    if (!n || f.uploaded_at > n.uploaded_at || (f.uploaded_at === n.uploaded_at && f.firmware_model > n.firmware_model)) out.set(f.hardware_model, f);
  }
  return out;
}

/** An image PUT with the login cookie, reporting its progress (fetch
 * cannot report an upload's). */
function putWithProgress(path, file, bar) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", path);
    x.upload.addEventListener("progress", (e) => { if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; } });
    x.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(x.responseText); } catch { data = null; }
      if (x.status >= 200 && x.status < 300) resolve(data);
      else reject(new Error((data && data.error) || `${x.status} ${x.statusText}`));
    });
    x.addEventListener("error", () => reject(new Error(t("upload_failed"))));
    x.send(file);
  });
}

/** Admins: the firmware catalogue, what the devices of each model run,
 * uploads (with progress) and deletions. */
async function firmwarePage(note) {
  const [images, devices] = await Promise.all([api("GET", "/api/v1/firmware"), allDevices()]);
  const status = h("div");
  const byModel = new Map();
  for (const d of devices) {
    if (!d.hardware_model) continue;
    const m = byModel.get(d.hardware_model) || new Map();
    m.set(d.firmware_model || "?", (m.get(d.firmware_model || "?") || 0) + 1);
    byModel.set(d.hardware_model, m);
  }
  const newest = offered(images);
  const running = (f) => {
    const m = byModel.get(f.hardware_model);
    const on = (m && m.get(f.firmware_model)) || 0;
    const all = m ? [...m.values()].reduce((a, b) => a + b, 0) : 0;
    return t("fw_running", on, all);
  };
  const list = images.length ? table(
    [t("model"), t("firmware"), t("size"), "SHA-256", t("uploaded"), t("fw_devices"), ""],
    images,
    (f) => [
      f.hardware_model,
      h("span", {}, f.firmware_model, newest.get(f.hardware_model) === f ? h("span", { class: "muted" }, " · " + t("fw_offered")) : null),
      `${(f.size / 1e6).toFixed(2)} MB`,
      h("code", { title: f.sha256 || "" }, f.sha256 ? f.sha256.slice(0, 12) + "…" : "—"),
      when(f.uploaded_at),
      running(f),
      h("button", { class: "danger", onclick: async () => {
        if (!confirm(t("fw_confirm_delete", f.firmware_model, f.hardware_model))) return;
        try {
          await api("DELETE", `/api/v1/firmware/${enc(f.hardware_model)}/${enc(f.firmware_model)}`);
          await firmwarePage(t("done"));
        } catch (err) {
          flash(status, err.message, true);
        }
      } }, t("delete")),
    ]) : h("p", { class: "muted" }, t("fw_none"));
  const models = h("datalist", { id: "hw-models" }, [...byModel.keys()].sort().map((m) => h("option", { value: m })));
  const hw = h("input", { name: "hardware_model", required: true, maxlength: 128, list: "hw-models", "aria-label": t("fw_hw") });
  const fw = h("input", { name: "firmware_model", required: true, maxlength: 128, "aria-label": t("fw_version") });
  const file = h("input", { type: "file", name: "image", required: true, "aria-label": t("fw_image") });
  const bar = h("progress", { value: 0, max: 1, hidden: true });
  const form = h("form", { class: "login" }, models,
    h("label", {}, t("fw_hw"), hw), h("label", {}, t("fw_version"), fw), h("label", {}, t("fw_image"), file),
    h("button", { type: "submit" }, t("fw_upload")), bar);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file.files.length) return;
    bar.hidden = false;
    bar.value = 0;
    try {
      await putWithProgress(`/api/v1/firmware/${enc(hw.value)}/${enc(fw.value)}`, file.files[0], bar);
      await firmwarePage(t("fw_uploaded", fw.value));
    } catch (err) {
      bar.hidden = true;
      flash(status, err.message, true);
    }
  });
  show(t("firmware"), h("p", { class: "muted" }, t("fw_about")), status, list, h("h2", {}, t("fw_upload")), form);
  if (note) flash(status, note);
}

function nav() {
  const here = location.pathname;
  const link = (href, label) => h("a", { href, class: (href === "/" ? here === "/" : here.startsWith(href)) ? "here" : "" }, label);
  const items = [link("/", t("dashboard")), link("/devices", t("devices")), link("/live", t("live")), link("/events", t("events"))];
  if (isAdmin()) items.push(link("/users", t("users")), link("/tokens", t("tokens")), link("/firmware", t("firmware")), link("/audit", t("audit")));
  document.getElementById("nav").replaceChildren(...items);
  const out = h("button", { class: "link", onclick: async () => {
    await api("POST", "/api/v1/logout").catch(() => {});
    location.assign("/login");
  } }, t("logout"));
  document.getElementById("who").replaceChildren(
    h("button", { class: "link", onclick: switchLang }, t("lang")), " ",
    me ? h("span", { class: "muted" }, `${me.name || me.actor} (${me.role})`) : "", " ", me && me.name ? out : "");
}

const routes = [
  [/^\/login$/, loginPage],
  [/^\/$/, dashboard],
  [/^\/devices$/, devicesPage],
  [/^\/devices\/([^/]+)$/, (m) => devicePage(decodeURIComponent(m[1]))],
  [/^\/devices\/([^/]+)\/channels\/(\d+)$/, (m) => channelPage(decodeURIComponent(m[1]), Number(m[2]))],
  [/^\/live$/, livePage],
  [/^\/events$/, eventsPage],
  [/^\/users$/, usersPage],
  [/^\/tokens$/, tokensPage],
  [/^\/audit$/, auditPage],
  [/^\/firmware$/, () => firmwarePage()],
];

async function boot() {
  const path = location.pathname.replace(/\/+$/, "") || "/";
  if (path !== "/login") {
    try {
      me = await api("GET", "/api/v1/me");
    } catch {
      return; // api() went to /login
    }
  }
  nav();
  for (const [re, page] of routes) {
    const m = path.match(re);
    if (m) {
      try {
        await page(m);
      } catch (e) {
        if (e.status === 404) show(t("not_found"), h("p", { class: "error" }, e.message));
        else fail(e);
      }
      document.body.dataset.ready = "1";
      return;
    }
  }
  show(t("not_found"));
  document.body.dataset.ready = "1";
}

boot();
