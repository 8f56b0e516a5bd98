// The console's words in English and Simplified Chinese. The language is
// the browser's first choice of the two, unless the user picked one (kept
// in localStorage).

const en = {
  dashboard: "Dashboard", devices: "Devices", device: "Device", live: "Live", events: "Events", users: "Users", tokens: "Tokens",
  audit: "Audit", logout: "Log out", login: "Log in", name: "Name", password: "Password",
  wrong_login: "Wrong name or password.", online: "online", offline: "offline", channels: "Channels",
  channel: "Channel", live_channels: "Channels live", recording: "Recording", recent_alarms: "Recent alarms",
  no_alarms: "No alarms yet.", search: "Search devices…", ungrouped: "Other devices", model: "Model",
  firmware: "Firmware", last_seen: "Last seen", created: "Created", state: "State", actions: "Actions",
  reboot: "Reboot channel", sync_time: "Sync time", delete_device: "Delete device", confirm_delete: "Delete {0}?",
  done: "Done.", ptz: "PTZ", speed: "Speed", zoom: "Zoom", focus: "Focus", iris: "Iris", presets: "Presets",
  go: "Go", no_presets: "No presets.", record_start: "Start recording", record_stop: "Stop recording",
  policy: "Record policy", timeline: "Timeline", day: "Day", hour: "Hour", month: "Month", prev: "◀", next: "▶",
  now: "Now", download: "Download this range (MP4)", playing_at: "Playing back: {0}", playback_end: "Played to the end of what is recorded.", back_live: "Back to live",
  nothing_recorded: "Nothing recorded here.", cannot_decode:
    "This browser cannot decode {0}. ", try_sub: "Play the sub-stream instead", try_h264: "Play an H.264 rendition (made by the cloud)", grid: "Grid",
  choose: "— choose a channel —", type: "Type", since: "Since", all: "All", filter: "Filter", picture: "Picture",
  play_at: "Play recording", role: "Role", groups: "Groups", add: "Add", delete: "Delete", create: "Create",
  expires: "Expires", never: "never", token_once: "Copy this token now; it is not shown again:", revoke: "Revoke",
  actor: "Who", action: "What", target: "On", when: "When", from: "From", detail: "Detail",
  loading: "Loading…", starting_live: "Starting the stream…", stream_ended: "The stream ended.",
  not_found: "Not found.", lang: "中文", devices_all: "Devices (* for all, or login codes, comma-separated)",
  no_devices: "No devices.", viewer_only: "You may watch; controls are for operators.", frames: "frames",
  prerecord: "Pre-record (s)", mode: "Mode", save: "Save", saved: "Saved.",
  rename: "Rename", upgrade: "Upgrade to {0}", confirm_upgrade: "Upgrade the device's firmware to {0}? It restarts.",
  tours: "Preset tours", no_tours: "No tours.", detection: "Detection", motion: "Motion", intrusion: "Intrusion area",
  enable: "Enabled", sensitivity: "Sensitivity", delay: "Hold (s)", armed: "Armed", armed_from: "Armed from", armed_to: "Armed until", all_day: "all day",
  apply: "Apply", on: "on", off: "off", applied_by: "Last applied by {0}, {1}.",
  net_settings: "Network settings", net_none: "No online device is shown.", net_reading: "Reading {0} of {1} channels…",
  net_read: "{0} channels read, {1} failed.", net_read_one: "1 channel read, {1} failed.",
  n_channels: "{0} channels", one_channel: "1 channel", csv: "Download CSV", iface: "Interface", ip: "IP address", netmask: "Netmask",
  gateway: "Gateway", dhcp: "DHCP", mac: "MAC",
  never_applied: "Not applied through ivr yet (the device does not report its own settings).",
  draw_area: "Drag on the picture to draw the area (its edges in % of the picture):", edge_left: "Left", edge_top: "Top", edge_right: "Right", edge_bottom: "Bottom",
  tl_summary: "{0} recorded span(s) · {1} gap(s) · {2} alarm(s); click to play, drag to pick a range",
  mode_off: "Off", mode_continuous: "Always", mode_alarm: "On alarm", mode_schedule: "On a schedule",
  post: "Keep after alarm (s)", retention: "Keep (days)", timezone: "Time zone", add_window: "Add a time window",
  win_from: "From", win_to: "To", remove: "Remove",
  keep: "Keep this range", keep_why: "Why keep it? (optional)", kept: "Kept from retention: {0} segment(s), {1} MB so far.",
  holds: "Kept ranges (retention does not delete them)", kept_range: "Kept", release: "Release",
  erase: "Delete this range…", erase_sure: "Really delete this recording? It cannot be undone", erased: "Deleted {0} segment(s), {1} MB.",
  nodes_up: "Cloud nodes: {0} of {1} running", node: "Node", address: "Address", devices_online: "Devices online",
  heartbeat: "Last heartbeat", node_this: "this one", node_up: "running", node_down: "stopped (no heartbeat)",
  version: "Version", version_older: "not said (an older build)",
  fw_running: "{0} of {1} device(s) of this model run it", fw_devices: "Devices", fw_offered: "offered (newest)",
  fw_confirm_delete: "Delete firmware {0} for {1}? Devices are offered the newest image left.", fw_none: "No images in the catalogue.",
  fw_image: "Image file", fw_upload: "Upload an image", fw_uploaded: "Uploaded {0}.", upload_failed: "The upload failed (connection lost).",
  fw_about: "Devices ask for the newest image of their hardware model (GetFirmware); a device page's Upgrade button sends them to fetch it.",
  size: "Size", uploaded: "Uploaded", fw_hw: "Hardware model (as devices report it)", fw_version: "Firmware version",
  mixed_versions: "The running nodes run different versions ({0}): an upgrade under way? Upgrade the rest one at a time.",
};

const zh = {
  dashboard: "总览", devices: "设备", device: "设备", live: "实时", events: "事件", users: "用户", tokens: "令牌", audit: "审计",
  logout: "退出", login: "登录", name: "名称", password: "密码", wrong_login: "用户名或密码错误。", online: "在线",
  offline: "离线", channels: "通道", channel: "通道", live_channels: "直播中的通道", recording: "录像中",
  recent_alarms: "最近告警", no_alarms: "暂无告警。", search: "搜索设备…", ungrouped: "其他设备", model: "型号",
  firmware: "固件", last_seen: "最后在线", created: "创建时间", state: "状态", actions: "操作",
  reboot: "重启通道", sync_time: "校时", delete_device: "删除设备", confirm_delete: "删除 {0}？", done: "完成。",
  ptz: "云台", speed: "速度", zoom: "变倍", focus: "聚焦", iris: "光圈", presets: "预置位", go: "前往",
  no_presets: "没有预置位。", record_start: "开始录像", record_stop: "停止录像", policy: "录像计划",
  timeline: "时间轴", day: "天", hour: "小时", month: "月", prev: "◀", next: "▶", now: "现在",
  download: "下载此时段 (MP4)", playing_at: "回放中：{0}", playback_end: "已播放到录像的末尾。", back_live: "返回实时",
  nothing_recorded: "此处没有录像。", cannot_decode: "此浏览器无法解码 {0}。", try_sub: "改为播放子码流", try_h264: "播放云端转码的 H.264 版本",
  grid: "分屏", choose: "— 选择通道 —", type: "类型", since: "起始", all: "全部", filter: "筛选",
  picture: "图片", play_at: "播放录像", role: "角色", groups: "分组", add: "添加", delete: "删除",
  create: "创建", expires: "过期", never: "永不", token_once: "请立即复制此令牌，它不会再次显示：", revoke: "吊销",
  actor: "操作者", action: "操作", target: "对象", when: "时间", from: "来源", detail: "详情",
  loading: "加载中…", starting_live: "正在打开视频流…", stream_ended: "视频流已结束。", not_found: "未找到。",
  lang: "English", devices_all: "设备（* 表示全部，或以逗号分隔的登录码）", no_devices: "没有设备。",
  viewer_only: "您只能观看；控制需要操作员权限。", frames: "帧", prerecord: "预录 (秒)", mode: "模式",
  save: "保存", saved: "已保存。", rename: "重命名", upgrade: "升级到 {0}", confirm_upgrade: "将设备固件升级到 {0}？设备会重启。",
  tours: "巡航", no_tours: "没有巡航。", detection: "侦测", motion: "移动侦测", intrusion: "区域入侵", enable: "启用",
  sensitivity: "灵敏度", delay: "持续 (秒)", armed: "布防时间", armed_from: "布防开始", armed_to: "布防结束", all_day: "全天",
  apply: "应用", on: "开", off: "关", applied_by: "最近由 {0} 于 {1} 应用。",
  net_settings: "网络设置", net_none: "没有显示在线设备。", net_reading: "正在读取第 {0} / {1} 个通道…",
  net_read: "已读取 {0} 个通道，{1} 个失败。", net_read_one: "已读取 1 个通道，{1} 个失败。",
  n_channels: "{0} 个通道", one_channel: "1 个通道", csv: "下载 CSV", iface: "网卡", ip: "IP 地址", netmask: "子网掩码",
  gateway: "网关", dhcp: "DHCP", mac: "MAC",
  never_applied: "尚未通过 ivr 应用（设备不会上报自身的设置）。",
  draw_area: "在画面上拖动以绘制区域（边界为画面的百分比）：", edge_left: "左", edge_top: "上", edge_right: "右", edge_bottom: "下", tl_summary: "{0} 段录像 · {1} 处中断 · {2} 次告警；单击回放，拖动选择时段",
  mode_off: "关闭", mode_continuous: "全天录像", mode_alarm: "告警录像", mode_schedule: "定时录像",
  post: "告警后延录 (秒)", retention: "保留 (天)", timezone: "时区", add_window: "添加时间段", win_from: "从", win_to: "至", remove: "移除",
  keep: "保留此时段", keep_why: "保留原因（可选）", kept: "已免于自动清理：目前 {0} 段，{1} MB。",
  holds: "保留的时段（不会被自动清理）", kept_range: "保留", release: "解除保留",
  erase: "删除此时段…", erase_sure: "确定删除这段录像？删除后无法恢复", erased: "已删除 {0} 段，{1} MB。",
  nodes_up: "云端节点：{0}/{1} 运行中", node: "节点", address: "地址", devices_online: "在线设备",
  heartbeat: "最近心跳", node_this: "本节点", node_up: "运行中", node_down: "已停止（无心跳）",
  version: "版本", version_older: "未报告（旧版本）",
  fw_running: "此型号 {1} 台设备中 {0} 台运行此版本", fw_devices: "设备", fw_offered: "当前提供（最新）",
  fw_confirm_delete: "删除 {1} 的固件 {0}？设备将获得剩余的最新固件。", fw_none: "固件库为空。",
  fw_image: "固件文件", fw_upload: "上传固件", fw_uploaded: "已上传 {0}。", upload_failed: "上传失败（连接中断）。",
  fw_about: "设备按硬件型号获取最新固件（GetFirmware）；设备页面的升级按钮会让设备去获取。",
  size: "大小", uploaded: "上传时间", fw_hw: "硬件型号（与设备上报一致）", fw_version: "固件版本",
  mixed_versions: "运行中的节点版本不一致（{0}）：正在升级？请逐个升级其余节点。",
};

const tables = { en, zh };

function pick() {
  const saved = localStorage.getItem("ivr.lang");
  if (saved && tables[saved]) return saved;
  for (const l of navigator.languages || [navigator.language || "en"]) {
    if (l.toLowerCase().startsWith("zh")) return "zh";
    if (l.toLowerCase().startsWith("en")) return "en";
  }
  return "en";
}

export let lang = pick();
document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";

/** The phrase `key`, `{0}`… replaced by `args`. */
export function t(key, ...args) {
  const s = tables[lang][key] ?? en[key] ?? key;
  return s.replace(/\{(\d)\}/g, (_, i) => String(args[Number(i)]));
}

export function switchLang() {
  localStorage.setItem("ivr.lang", lang === "en" ? "zh" : "en");
  location.reload();
}

/** A time as the reader writes it. */
export function when(unixSecs) {
  if (unixSecs == null) return "—";
  return new Date(unixSecs * 1000).toLocaleString(lang === "zh" ? "zh-CN" : undefined);
}
