//! `ivr dvrip …`: everything python-dvr does, and what it cannot.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use chrono::NaiveDateTime;
use clap::{Args as ClapArgs, Subcommand};
use dvrip::client::{parse_local_time, Client, ClientConfig, FileQuery, PlaybackTarget, SocketMode, UpgradeProgress};
use dvrip::media::{FrameKind, MediaFrame};
use dvrip::messages::{PtzCommand, StreamType};
use dvrip::Encryption;
use indicatif::{ProgressBar, ProgressStyle};
use ivr_edge::live::{Feed, FeedEvent, FeedOptions};
use ivr_edge::source::StreamKind;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

mod download;
mod stream;
use download::*;
use stream::*;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ClapArgs)]
#[command(next_help_heading = "Connection (every command)")]
struct Conn {
    /// Device address (not needed by `discover` and `alarm-center`).
    #[arg(long, global = true, env = "DVR_HOST")]
    host: Option<String>,
    /// Device TCP port.
    #[arg(long, global = true, default_value_t = 34567, env = "DVR_PORT")]
    port: u16,
    /// User name.
    #[arg(long, global = true, default_value = "admin", env = "DVR_USERNAME")]
    user: String,
    /// Password (sent as its Sofia hash). Prefer DVR_PASSWORD: a command
    /// line is visible to other users of the machine.
    #[arg(long, global = true, default_value = "", env = "DVR_PASSWORD", hide_env_values = true)]
    password: String,
    /// Send the password plain (`EncryptType: NONE`) instead of its Sofia hash.
    #[arg(long, global = true)]
    plain_password: bool,
    /// Seconds to wait for each reply.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find devices by UDP broadcast (1530 on port 34569).
    Discover {
        /// Where to send the search: a broadcast address, 239.255.255.250:34569, or one host.
        #[arg(long, default_value = "255.255.255.255:34569")]
        target: SocketAddr,
        /// Seconds to collect replies.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
    },
    /// System, storage and work-state information.
    Info,
    /// Configuration by path (General.General, NetWork.NetCommon, Camera.Param.[0]…).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The device clock: `time`, `time set "2024-05-17 10:00:00"`, `time sync`.
    Time {
        #[command(subcommand)]
        cmd: Option<TimeCmd>,
    },
    /// Reboot the device.
    Reboot,
    /// Pan/tilt/zoom: move for a while, presets, tours.
    Ptz(PtzArgs),
    /// Save a snapshot (JPEG).
    Snapshot {
        /// The channel (from 0).
        #[arg(long, default_value_t = 0)]
        channel: u32,
        /// Where to write the JPEG.
        #[arg(short, long)]
        output: String,
    },
    /// Live stream: to a file or `-` (Annex B, MPEG-TS, fragmented MP4, FLV or
    /// the device's own framing), to an RTMP server, or as a live HLS window.
    Stream {
        /// The channel (from 0).
        #[arg(long, default_value_t = 0)]
        channel: u32,
        /// The extra (sub) stream instead of the main one.
        #[arg(long)]
        sub: bool,
        /// Claim on a second TCP connection (the vendor's way).
        #[arg(long)]
        second_socket: bool,
        /// Stop after this many video frames.
        #[arg(long)]
        frames: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// Write the device's own framing (0x1FC… headers) instead of Annex B.
        #[arg(long)]
        raw: bool,
        /// Container of -o: `annexb` (default), `ts` (MPEG-TS), `mp4`
        /// (fragmented; plays while it grows), `flv`, or `raw` (the
        /// device's own framing, as --raw). H.264 and H.265; the camera's
        /// G.711 audio goes into FLV.
        #[arg(long, default_value = "annexb")]
        format: String,
        /// Where to write (a file or `-`).
        #[arg(short, long, required_unless_present_any = ["rtmp", "hls"])]
        output: Option<String>,
        /// Publish to an RTMP server (rtmp://host[:port]/app/key), with the
        /// camera's audio; reconnects when the server goes away. H.265 goes
        /// as Enhanced RTMP, which not every server reads.
        #[arg(long, conflicts_with = "raw")]
        rtmp: Option<String>,
        /// Write a live HLS window into this directory (index.m3u8 and
        /// segments; old segments are deleted), for any web server to serve.
        #[arg(long, conflicts_with = "raw")]
        hls: Option<std::path::PathBuf>,
        /// HLS: segments in the playlist.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=1000))]
        hls_window: u16,
        /// HLS: seconds a segment lasts at least (cut at the next keyframe).
        #[arg(long, default_value_t = 2.0)]
        hls_segment: f64,
        /// HLS: segment container, ts or mp4.
        #[arg(long, default_value = "ts")]
        hls_format: String,
        /// End when the camera drops the stream, instead of dialling it
        /// again (1 s doubling to 30 s) and carrying on where it stopped.
        #[arg(long)]
        no_reconnect: bool,
    },
    /// List recordings.
    Files {
        /// The channel (from 0).
        #[arg(long, default_value_t = 0)]
        channel: u32,
        /// From (YYYY-MM-DD HH:MM:SS, device time); default: 24 hours ago.
        #[arg(long)]
        from: Option<String>,
        /// To; default: now.
        #[arg(long)]
        to: Option<String>,
        /// Event letters: * all, R regular, M motion, A alarm, H manual.
        #[arg(long, default_value = "*")]
        event: String,
    },
    /// Download a recording by file name, or a time range of a channel.
    Download {
        /// A file name from `files`.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        file: Option<String>,
        /// The channel of a time range (from 0).
        #[arg(long, default_value_t = 0)]
        channel: u32,
        /// Start of a time range (YYYY-MM-DD HH:MM:SS, device time).
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// End of the time range (YYYY-MM-DD HH:MM:SS, device time).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Demux to an Annex B elementary stream instead of the device's file format.
        #[arg(long, conflicts_with = "format")]
        annexb: bool,
        /// Write a playable file instead of the device's format (`raw`, the
        /// default): mp4 (fragmented), ts, flv, annexb, or hls (-o
        /// DIR/NAME.m3u8: a VOD playlist of 4 s TS segments stamped with the
        /// device's clock).
        #[arg(long)]
        format: Option<String>,
        /// Claim the download on a second TCP connection (the vendor's way).
        #[arg(long)]
        second_socket: bool,
        /// Where to write (a file, `-`, or DIR/NAME.m3u8 with --format hls).
        #[arg(short, long)]
        output: String,
    },
    /// Search the device log.
    Logs {
        /// From (YYYY-MM-DD HH:MM:SS, device time); default: 24 hours ago.
        #[arg(long)]
        from: Option<String>,
        /// To; default: now.
        #[arg(long)]
        to: Option<String>,
        /// LogAll, LogIn, SaveConfig, SetTime, Reboot, EventStart…
        #[arg(long = "type", default_value = "LogAll")]
        kind: String,
    },
    /// Users and groups.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Follow alarms (guard, then print each 1504 push).
    Alarms {
        /// Stop after this many alarms.
        #[arg(long)]
        count: Option<u64>,
        /// Raise a network alarm first (1506), e.g. to test the path.
        #[arg(long)]
        trigger: bool,
    },
    /// Upgrade the firmware from an image file.
    Upgrade {
        /// The firmware image (.bin as the vendor ships it).
        file: String,
    },
    /// Export the configuration archive.
    Export {
        /// Where to write the archive.
        #[arg(short, long)]
        output: String,
        /// The log instead of the configuration.
        #[arg(long)]
        log: bool,
    },
    /// Import a configuration archive (as exported).
    Import {
        /// The archive, as `export` wrote it.
        file: String,
    },
    /// Receive alarm-center pushes (1508) from devices.
    AlarmCenter {
        /// Address to listen on for the devices' pushes.
        #[arg(long, default_value = "0.0.0.0:15002")]
        listen: SocketAddr,
        /// Stop after this many pushes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Network keyboard: press a key (Up, Down, Left, Right, Menu, Esc, Enter…).
    Key {
        /// The key's name, as the device's keyboard has it.
        key: String,
    },
    /// Channel titles: list, or set them in channel order.
    Titles {
        /// New titles, channel 0 first (none: list them).
        titles: Vec<String>,
    },
    /// Two-way audio: send a raw G.711 A-law file, save what the device sends.
    Talk {
        /// G.711 A-law to send (8 kHz mono).
        #[arg(long)]
        send: Option<String>,
        /// Where to save what the device sends.
        #[arg(long)]
        output: Option<String>,
        /// How long to talk and listen.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Any message id with any JSON body (for commands firmware adds later).
    Raw {
        /// The message id (decimal, e.g. 1042).
        id: u16,
        /// The JSON body, as a string.
        body: String,
    },
    /// List the message ids of the protocol tables.
    Ids,
    /// Convert a file in the device's format (as downloaded, or saved by
    /// other tools) to an Annex B elementary stream.
    Demux {
        /// The file in the device's format.
        input: String,
        /// Where to write the Annex B stream (a file or `-`).
        #[arg(short, long)]
        output: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Read a path (JSON).
    Get {
        /// The configuration path, e.g. General.General.
        name: String,
    },
    /// Set a path to JSON (a sparse object merges).
    Set {
        /// The configuration path.
        name: String,
        /// The JSON to set.
        value: String,
    },
    /// The factory default of a path.
    Default {
        /// The configuration path.
        name: String,
    },
}

#[derive(Subcommand)]
enum TimeCmd {
    /// Read the device clock.
    Get,
    /// Set the device clock.
    Set {
        /// The time (YYYY-MM-DD HH:MM:SS, the device's local time).
        time: String,
        /// Use OPTimeSettingNoRTC (1590), for devices without a clock chip.
        #[arg(long)]
        no_rtc: bool,
    },
    /// Set the device clock to this machine's.
    Sync {
        /// Use OPTimeSettingNoRTC (1590), for devices without a clock chip.
        #[arg(long)]
        no_rtc: bool,
    },
}

#[derive(ClapArgs)]
struct PtzArgs {
    /// up, down, left, right, left-up, left-down, right-up, right-down,
    /// zoom-in, zoom-out, focus-near, focus-far, iris-open, iris-close,
    /// preset-set, preset-goto, preset-clear, tour-start, tour-stop.
    action: String,
    /// Preset or tour number.
    number: Option<i64>,
    /// The channel (from 0).
    #[arg(long, default_value_t = 0)]
    channel: u32,
    /// Speed, 1 (slow) to 8 (fast).
    #[arg(long, default_value_t = 5)]
    step: u32,
    /// How long to move before stopping (milliseconds).
    #[arg(long, default_value_t = 500)]
    ms: u64,
}

#[derive(Subcommand)]
enum UsersCmd {
    /// The users.
    List,
    /// The groups.
    Groups,
    /// Every authority a user or group can have.
    Authorities,
    /// Add a user.
    Add {
        /// The user's name.
        name: String,
        /// The user's password.
        password: String,
        /// The group the user is in.
        #[arg(long, default_value = "user")]
        group: String,
        /// A note kept with the user.
        #[arg(long, default_value = "")]
        memo: String,
    },
    /// Delete a user.
    Del {
        /// The user's name.
        name: String,
    },
    /// Change a user's password.
    Passwd {
        /// The user's name.
        name: String,
        /// The current password.
        old: String,
        /// The new password.
        new: String,
    },
    /// Add a group.
    AddGroup {
        /// The group's name.
        name: String,
        /// Authorities (default: those of `user`).
        #[arg(long, value_delimiter = ',')]
        authorities: Vec<String>,
        /// A note kept with the group.
        #[arg(long, default_value = "")]
        memo: String,
    },
    /// Delete a group.
    DelGroup {
        /// The group's name.
        name: String,
    },
}

fn client(c: &Conn) -> anyhow::Result<Client> {
    let host = c.host.as_deref().ok_or_else(|| anyhow!("--host is required for this command (or DVR_HOST)"))?;
    let mut cfg = ClientConfig::new(format!("{host}:{}", c.port), c.user.clone(), c.password.clone());
    cfg.timeout = Duration::from_secs(c.timeout.max(1));
    if c.plain_password {
        cfg.encryption = Encryption::None;
    }
    Ok(Client::new(cfg))
}

fn print(json: bool, v: &Value, human: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human());
    }
}

fn time_arg(s: &Option<String>, what: &str, default: NaiveDateTime) -> anyhow::Result<NaiveDateTime> {
    match s {
        None => Ok(default),
        Some(s) => parse_local_time(s).ok_or_else(|| anyhow!("{what} {s:?}: expected YYYY-MM-DD HH:MM:SS")),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let json = a.conn.json;
    match a.cmd {
        Cmd::Discover { target, wait } => {
            let found = dvrip::discovery::search(target, Duration::from_secs_f64(wait.max(0.1)))
                .await
                .with_context(|| format!("discovery via {target}"))?;
            let v: Vec<Value> = found
                .iter()
                .map(|(from, d)| json!({"from": from.to_string(), "host_ip": d.host_ip, "mac": d.mac, "name": d.host_name, "serial": d.serial, "tcp_port": d.tcp_port, "channels": d.channels}))
                .collect();
            print(json, &json!(v), || {
                if found.is_empty() {
                    return "no devices answered".into();
                }
                found
                    .iter()
                    .map(|(from, d)| {
                        format!(
                            "{} {} {} ip {} port {} channels {} (from {from})",
                            d.serial,
                            d.mac,
                            d.host_name,
                            d.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                            d.tcp_port,
                            d.channels
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Cmd::AlarmCenter { listen, count } => {
            let l =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("alarm center listening on {}", l.local_addr()?);
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(dvrip::alarm_center::serve(l, tx));
            let mut n = 0;
            while let Some(p) = rx.recv().await {
                let m = &p.message;
                let v = json!({"from": p.from.to_string(), "device_ip": m.ip(), "channel": m.channel, "event": m.event, "status": m.status, "start_time": m.start_time, "serial": m.serial_id, "type": m.kind});
                if json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    println!(
                        "{} {} channel {} {} {} ({} from {})",
                        m.start_time, m.event, m.channel, m.status, m.kind, m.serial_id, p.from
                    );
                }
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
        }
        Cmd::Ids => {
            for (id, name) in dvrip::ids::ALL {
                println!("{id} {name}");
            }
        }
        Cmd::Demux { input, output } => {
            let data = tokio::fs::read(&input).await.with_context(|| format!("cannot read {input}"))?;
            let mut d = dvrip::media::Demuxer::new();
            d.feed(&data);
            let mut out = Output::open(&output).await?;
            let (mut video, mut audio, mut other) = (0u64, 0u64, 0u64);
            let mut first = None;
            while let Some(f) = d.next_frame() {
                match f.kind {
                    FrameKind::Video { .. } => {
                        out.write(&f.payload).await?;
                        video += 1;
                        first.get_or_insert(f.kind);
                    }
                    FrameKind::Audio { .. } => audio += 1,
                    _ => other += 1,
                }
            }
            out.finish().await?;
            let skipped: usize = d.take_resyncs().iter().map(|r| r.bytes).sum();
            let left = d.pending();
            let v = json!({"video_frames": video, "audio_frames": audio, "other_frames": other, "skipped_bytes": skipped, "incomplete_bytes": left});
            if output != "-" {
                print(json, &v, || {
                    let what = match first {
                        Some(FrameKind::Video { codec, width, height, fps, .. }) => {
                            format!(" ({} {width}x{height} @ {fps} fps)", codec.name())
                        }
                        _ => String::new(),
                    };
                    format!("{video} video frames{what}, {audio} audio, {other} other; {skipped} bytes skipped, {left} left incomplete")
                });
            }
        }
        cmd => {
            let c = client(&a.conn)?;
            let r = device(&c, cmd, json).await;
            let _ = c.logout().await;
            r?;
        }
    }
    Ok(())
}

async fn device(c: &Client, cmd: Cmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::Info => {
            let login = c.login_info().await?;
            let sys = c.system_info().await?;
            let storage = c.storage_info().await?;
            let work = c.work_state().await?;
            let time = c.time().await?;
            let v = json!({"device_type": login.device_type, "channels": login.channels, "system": sys, "storage": storage, "work_state": work, "time": time.map(|t| dvrip::json::format_time(&t))});
            print(json, &v, || {
                let s = |k: &str| {
                    sys.get(k)
                        .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                        .unwrap_or_default()
                };
                let minutes =
                    sys.get("DeviceRunTime").and_then(Value::as_str).and_then(dvrip::json::parse_hex_u32).unwrap_or(0);
                format!(
                    "{} {} serial {}\nsoftware {} built {}\nchannels {} (video in {}, talk {}), up {}h{:02}m\ntime {}",
                    login.device_type,
                    s("HardWare"),
                    s("SerialNo"),
                    s("SoftWareVersion"),
                    s("BuildTime"),
                    login.channels,
                    s("VideoInChannel"),
                    s("TalkInChannel"),
                    minutes / 60,
                    minutes % 60,
                    time.map(|t| dvrip::json::format_time(&t)).unwrap_or_else(|| "unset".into())
                )
            });
        }
        Cmd::Config(ConfigCmd::Get { name }) => {
            let v = c.config_get(&name).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Config(ConfigCmd::Default { name }) => {
            let v = c.config_default(&name).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Config(ConfigCmd::Set { name, value }) => {
            let v: Value = serde_json::from_str(&value).with_context(|| format!("the value for {name} is not JSON"))?;
            c.config_set(&name, v).await?;
            print(json, &json!({"set": name}), || format!("{name} set"));
        }
        Cmd::Time { cmd } => match cmd.unwrap_or(TimeCmd::Get) {
            TimeCmd::Get => {
                let t = c.time().await?.map(|t| dvrip::json::format_time(&t));
                print(json, &json!({"time": t}), || t.clone().unwrap_or_else(|| "unset (0000-00-00 00:00:00)".into()));
            }
            TimeCmd::Set { time, no_rtc } => {
                let t =
                    parse_local_time(&time).ok_or_else(|| anyhow!("time {time:?}: expected YYYY-MM-DD HH:MM:SS"))?;
                set_clock(c, &t, no_rtc, json).await?;
            }
            TimeCmd::Sync { no_rtc } => set_clock(c, &chrono::Local::now().naive_local(), no_rtc, json).await?,
        },
        Cmd::Reboot => {
            c.reboot().await?;
            print(json, &json!({"rebooting": true}), || "rebooting".into());
        }
        Cmd::Ptz(p) => ptz(c, p, json).await?,
        Cmd::Snapshot { channel, output } => {
            let jpeg = c.snapshot(channel).await?;
            write_file(&output, &jpeg).await?;
            print(json, &json!({"bytes": jpeg.len(), "output": output}), || {
                format!("{} bytes written to {output}", jpeg.len())
            });
        }
        Cmd::Stream {
            channel,
            sub,
            second_socket,
            frames,
            seconds,
            raw,
            format,
            output,
            rtmp,
            hls,
            hls_window,
            hls_segment,
            hls_format,
            no_reconnect,
        } => {
            let st = if sub { StreamType::Extra } else { StreamType::Main };
            let mode = if second_socket { SocketMode::Second } else { SocketMode::Single };
            let limits = (frames, seconds.map(Duration::from_secs_f64));
            let raw = raw || format == "raw";
            if raw {
                if !matches!(format.as_str(), "annexb" | "raw") {
                    bail!("--raw writes the device's framing; it does not go with --format {format}");
                }
                let output = output.unwrap_or_else(|| "-".into());
                return stream_raw(c, channel, st, mode, limits, &output, json).await;
            }
            let file = match output {
                None => None,
                Some(o) => Some((
                    o,
                    match format.as_str() {
                        "annexb" | "raw-es" | "h264" | "h265" => None,
                        f => Some(
                            ivr_media::sink::Format::parse(f)
                                .with_context(|| format!("--format {f:?}: expected annexb, ts, mp4, flv or raw"))?,
                        ),
                    },
                )),
            };
            let hls = match hls {
                None => None,
                Some(dir) => {
                    let f = match ivr_media::sink::Format::parse(&hls_format) {
                        Some(f @ (ivr_media::sink::Format::Ts | ivr_media::sink::Format::Mp4)) => f,
                        _ => bail!("--hls-format {hls_format:?}: expected ts or mp4"),
                    };
                    if !(0.5..=60.0).contains(&hls_segment) {
                        bail!("--hls-segment {hls_segment}: expected 0.5 to 60 seconds");
                    }
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    Some((dir, f, hls_window as usize, hls_segment))
                }
            };
            let outs = Outputs { file, rtmp, hls };
            stream_fanout(c, channel, st, mode, limits, outs, !no_reconnect, json).await?;
        }
        Cmd::Files { channel, from, to, event } => {
            let now = c.time().await?.unwrap_or_else(|| chrono::Local::now().naive_local());
            let from = time_arg(&from, "--from", now - chrono::Duration::hours(24))?;
            let to = time_arg(&to, "--to", now)?;
            let mut q = FileQuery::new(channel, from, to);
            q.event = event;
            let files = c.files(&q).await?;
            print(json, &serde_json::to_value(&files)?, || {
                files
                    .iter()
                    .map(|f| format!("{} {} {:>8}K {}", f.begin, f.end, f.length_kib().unwrap_or(0), f.name))
                    .chain(std::iter::once(format!("{} files", files.len())))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Cmd::Download { file, channel, from, to, annexb, format, second_socket, output } => {
            let annexb = annexb || matches!(format.as_deref(), Some("annexb" | "h264" | "h265" | "raw-es"));
            let hls = matches!(format.as_deref(), Some("hls" | "m3u8"));
            if hls && !output.ends_with(".m3u8") {
                bail!("--format hls writes a playlist: give -o DIR/NAME.m3u8 (segments go beside it)");
            }
            let mut sink = match format.as_deref() {
                None | Some("raw" | "annexb" | "h264" | "h265" | "raw-es" | "hls" | "m3u8") => None,
                Some(f) => match ivr_media::sink::Format::parse(f) {
                    Some(fmt) => Some(ivr_media::sink::Sink::new(fmt, 25)),
                    None => bail!("--format {f:?}: expected mp4, ts, flv, hls, annexb or raw"),
                },
            };
            let mode = if second_socket { SocketMode::Second } else { SocketMode::Single };
            let (target, expected) = match (file, from, to) {
                (Some(name), _, _) => {
                    let (begin, end) = file_times(&name).unwrap_or_default();
                    let mut q = FileQuery::new(channel_of(&name).unwrap_or(channel), begin, end);
                    q.event = "*".into();
                    let found = c.files(&q).await.ok().and_then(|fs| fs.into_iter().find(|f| f.name == name));
                    let entry = found.unwrap_or(dvrip::messages::FileEntry {
                        begin: dvrip::json::format_time(&begin),
                        end: dvrip::json::format_time(&end),
                        disk: 0,
                        serial: 0,
                        length: "0x00000000".into(),
                        name: name.clone(),
                    });
                    let kib = entry.length_kib().unwrap_or(0) as u64;
                    (PlaybackTarget::File(entry), kib * 1024)
                }
                (None, Some(from), Some(to)) => {
                    let begin = time_arg(&Some(from), "--from", NaiveDateTime::default())?;
                    let end = time_arg(&Some(to), "--to", NaiveDateTime::default())?;
                    if end <= begin {
                        bail!("--to must be after --from");
                    }
                    let files = c.files(&FileQuery::new(channel, begin, end)).await?;
                    let kib: u64 = files.iter().map(|f| f.length_kib().unwrap_or(0) as u64).sum();
                    (PlaybackTarget::Time { channel, begin, end, stream: StreamType::Main }, kib * 1024)
                }
                _ => bail!("give --file NAME, or --from and --to"),
            };
            let mut s = c.download(target, mode).await?;
            let pb = if json || output == "-" { ProgressBar::hidden() } else { bar(expected.max(1), "download") };
            if hls {
                let (frames, segments) = download_hls(&mut s, &output, &pb).await?;
                pb.finish_and_clear();
                let bytes = s.bytes();
                drop(s);
                if frames == 0 {
                    bail!("the device sent no video");
                }
                print(json, &json!({"bytes": bytes, "frames": frames, "segments": segments, "output": output}), || {
                    format!("{frames} frames in {segments} segments, {output}")
                });
                return Ok(());
            }
            let mut out = Output::open(&output).await?;
            let mut frames = 0u64;
            if let Some(sink) = &mut sink {
                let fmt = format.clone().unwrap_or_default();
                while let Some(f) = s.next_frame().await {
                    if matches!(f.kind, FrameKind::Video { .. }) {
                        frames += 1;
                    }
                    push_frame(sink, &f, &fmt, &mut out).await?;
                    pb.set_position(s.bytes());
                }
                finish_sink(sink, &output, &mut out).await?;
            } else if annexb {
                while let Some(f) = s.next_frame().await {
                    if matches!(f.kind, FrameKind::Video { .. }) {
                        out.write(&f.payload).await?;
                        frames += 1;
                    }
                    pb.set_position(s.bytes());
                }
            } else {
                while let Some(chunk) = s.next_chunk().await {
                    out.write(&chunk).await?;
                    pb.set_position(s.bytes());
                }
            }
            out.finish().await?;
            pb.finish_and_clear();
            let bytes = s.bytes();
            drop(s);
            if bytes == 0 {
                bail!("the device sent no data");
            }
            if output != "-" {
                print(json, &json!({"bytes": bytes, "frames": frames, "output": output}), || {
                    format!("{bytes} bytes downloaded to {output}")
                });
            }
        }
        Cmd::Logs { from, to, kind } => {
            let now = c.time().await?.unwrap_or_else(|| chrono::Local::now().naive_local());
            let from = time_arg(&from, "--from", now - chrono::Duration::days(30))?;
            let to = time_arg(&to, "--to", now + chrono::Duration::minutes(1))?;
            let logs = c.logs(&from, &to, &kind).await?;
            print(json, &serde_json::to_value(&logs)?, || {
                logs.iter()
                    .map(|l| format!("{:>5} {} {:<12} {:<8} {}", l.position, l.time, l.kind, l.user, l.data))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Cmd::Users(u) => users(c, u, json).await?,
        Cmd::Alarms { count, trigger } => {
            let mut rx = c.alarms();
            c.guard().await?;
            if trigger {
                c.net_alarm(true).await?;
            }
            eprintln!("guarded; waiting for alarms");
            let mut n = 0;
            loop {
                match rx.recv().await {
                    Ok(a) => {
                        if json {
                            println!("{}", serde_json::to_string(&a)?);
                        } else {
                            println!("{} {} channel {} {}", a.start_time, a.event, a.channel, a.status);
                        }
                        std::io::stdout().flush()?;
                        n += 1;
                        if count.is_some_and(|c| n >= c) {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => eprintln!("{k} alarms missed"),
                    Err(_) => bail!("the connection closed"),
                }
            }
            if trigger {
                c.net_alarm(false).await?;
            }
            c.unguard().await?;
        }
        Cmd::Upgrade { file } => {
            let image = tokio::fs::read(&file).await.with_context(|| format!("cannot read {file}"))?;
            if image.is_empty() {
                bail!("{file} is empty");
            }
            let pb = if json { ProgressBar::hidden() } else { bar(image.len() as u64, "upload") };
            let mut writing = 0u8;
            c.upgrade(&image, |p| match p {
                UpgradeProgress::Sent(n, _) => pb.set_position(n),
                UpgradeProgress::Writing(pct) => {
                    writing = pct;
                    pb.set_message(format!("device writing {pct}%"));
                }
                UpgradeProgress::Done => pb.finish_with_message("upgrade successful"),
            })
            .await?;
            pb.finish_and_clear();
            print(json, &json!({"upgraded": true, "bytes": image.len(), "progress": writing}), || {
                format!("upgrade successful ({} bytes); the device restarts", image.len())
            });
        }
        Cmd::Export { output, log } => {
            let data = if log { c.export_log().await? } else { c.export_config().await? };
            write_file(&output, &data).await?;
            print(json, &json!({"bytes": data.len(), "output": output}), || {
                format!("{} bytes written to {output}", data.len())
            });
        }
        Cmd::Import { file } => {
            let data = tokio::fs::read(&file).await.with_context(|| format!("cannot read {file}"))?;
            c.import_config(&data).await?;
            print(json, &json!({"imported": file}), || format!("{file} imported"));
        }
        Cmd::Key { key } => {
            c.key(&key, true).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.key(&key, false).await?;
            print(json, &json!({"pressed": key}), || format!("{key} pressed"));
        }
        Cmd::Titles { titles } => {
            if !titles.is_empty() {
                c.set_channel_titles(&titles).await?;
            }
            let t = c.channel_titles().await?;
            print(json, &json!(t), || {
                t.iter().enumerate().map(|(i, t)| format!("{i} {t}")).collect::<Vec<_>>().join("\n")
            });
        }
        Cmd::Talk { send, output, seconds } => {
            let audio = match &send {
                Some(f) => Some(tokio::fs::read(f).await.with_context(|| format!("cannot read {f}"))?),
                None => None,
            };
            let mut t = c.talk(dvrip::media::AudioCodec::G711A).await?;
            if let Some(a) = &audio {
                t.send(a).await?;
            }
            let mut received = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
            while let Ok(Some(f)) = tokio::time::timeout_at(deadline, t.recv()).await {
                received.extend_from_slice(&f.payload);
            }
            t.stop().await?;
            if let Some(o) = &output {
                write_file(o, &received).await?;
            }
            print(json, &json!({"sent": audio.as_ref().map_or(0, Vec::len), "received": received.len()}), || {
                format!("sent {} bytes, received {} bytes of G.711", audio.as_ref().map_or(0, Vec::len), received.len())
            });
        }
        Cmd::Raw { id, body } => {
            let mut v: Value = serde_json::from_str(&body).context("the body is not JSON")?;
            if v.get("SessionID").is_none() {
                v["SessionID"] = json!(dvrip::json::format_session(c.session_id().await?));
            }
            let r = c.raw(id, v).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Cmd::Discover { .. } | Cmd::AlarmCenter { .. } | Cmd::Ids | Cmd::Demux { .. } => {
            unreachable!("handled without a device")
        }
    }
    Ok(())
}

async fn set_clock(c: &Client, t: &NaiveDateTime, no_rtc: bool, json: bool) -> anyhow::Result<()> {
    if no_rtc {
        c.set_time_no_rtc(t).await?
    } else {
        c.set_time(t).await?
    }
    let s = dvrip::json::format_time(t);
    print(json, &json!({"time": s}), || format!("device time set to {s}"));
    Ok(())
}

async fn ptz(c: &Client, p: PtzArgs, json: bool) -> anyhow::Result<()> {
    let moves = [
        ("up", PtzCommand::Up),
        ("down", PtzCommand::Down),
        ("left", PtzCommand::Left),
        ("right", PtzCommand::Right),
        ("left-up", PtzCommand::LeftUp),
        ("left-down", PtzCommand::LeftDown),
        ("right-up", PtzCommand::RightUp),
        ("right-down", PtzCommand::RightDown),
        ("zoom-in", PtzCommand::ZoomTile),
        ("zoom-out", PtzCommand::ZoomWide),
        ("focus-near", PtzCommand::FocusNear),
        ("focus-far", PtzCommand::FocusFar),
        ("iris-close", PtzCommand::IrisSmall),
        ("iris-open", PtzCommand::IrisLarge),
    ];
    let once = [
        ("preset-set", PtzCommand::SetPreset),
        ("preset-goto", PtzCommand::GotoPreset),
        ("preset-clear", PtzCommand::ClearPreset),
        ("tour-start", PtzCommand::StartTour),
        ("tour-stop", PtzCommand::StopTour),
    ];
    if let Some((_, cmd)) = moves.iter().find(|(n, _)| *n == p.action) {
        c.ptz(*cmd, p.channel, p.step, 65535, 0).await?;
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        c.ptz_stop(*cmd, p.channel).await?;
    } else if let Some((_, cmd)) = once.iter().find(|(n, _)| *n == p.action) {
        let n = p.number.unwrap_or(if p.action.starts_with("tour") { 0 } else { -2 });
        if n < 0 || (!p.action.starts_with("tour") && n == 0) {
            bail!("{} needs a preset number (1–255)", p.action);
        }
        let (preset, tour) = if p.action.starts_with("tour") { (65535, n as u32) } else { (n, 0) };
        c.ptz(*cmd, p.channel, p.step, preset, tour).await?;
    } else {
        let all: Vec<&str> = moves.iter().chain(once.iter()).map(|(n, _)| *n).collect();
        bail!("unknown PTZ action {:?}; one of: {}", p.action, all.join(", "));
    }
    print(json, &json!({"ptz": p.action, "channel": p.channel}), || format!("{} done", p.action));
    Ok(())
}

async fn users(c: &Client, u: UsersCmd, json: bool) -> anyhow::Result<()> {
    match u {
        UsersCmd::List => {
            let users = c.users().await?;
            print(json, &json!(users), || {
                users
                    .iter()
                    .map(|u| {
                        format!(
                            "{:<12} group {:<8} {}{}",
                            u["Name"].as_str().unwrap_or(""),
                            u["Group"].as_str().unwrap_or(""),
                            u["Memo"].as_str().unwrap_or(""),
                            if u["Reserved"] == true { " (reserved)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        UsersCmd::Groups => {
            let groups = c.groups().await?;
            print(json, &json!(groups), || {
                groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{:<10} {} authorities  {}",
                            g["Name"].as_str().unwrap_or(""),
                            g["AuthorityList"].as_array().map_or(0, Vec::len),
                            g["Memo"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        UsersCmd::Authorities => {
            let a = c.authority_list().await?;
            print(json, &json!(a), || a.join("\n"));
        }
        UsersCmd::Add { name, password, group, memo } => {
            let groups = c.groups().await?;
            let g = groups
                .iter()
                .find(|g| g["Name"] == group.as_str())
                .ok_or_else(|| anyhow!("no group {group:?} on the device"))?;
            let auth: Vec<String> = serde_json::from_value(g["AuthorityList"].clone()).unwrap_or_default();
            c.add_user(&name, &password, &group, &memo, &auth).await?;
            print(json, &json!({"added": name}), || format!("user {name} added to {group}"));
        }
        UsersCmd::Del { name } => {
            c.delete_user(&name).await?;
            print(json, &json!({"deleted": name}), || format!("user {name} deleted"));
        }
        UsersCmd::Passwd { name, old, new } => {
            c.change_password(&name, &old, &new).await?;
            print(json, &json!({"changed": name}), || format!("password of {name} changed"));
        }
        UsersCmd::AddGroup { name, authorities, memo } => {
            let auth = if authorities.is_empty() {
                let groups = c.groups().await?;
                groups
                    .iter()
                    .find(|g| g["Name"] == "user")
                    .and_then(|g| serde_json::from_value(g["AuthorityList"].clone()).ok())
                    .unwrap_or_default()
            } else {
                authorities
            };
            c.add_group(&name, &memo, &auth).await?;
            print(json, &json!({"added": name}), || format!("group {name} added"));
        }
        UsersCmd::DelGroup { name } => {
            c.delete_group(&name).await?;
            print(json, &json!({"deleted": name}), || format!("group {name} deleted"));
        }
    }
    Ok(())
}
