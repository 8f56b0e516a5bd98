//! `ivr cvip …`: a CVIPv2 client for devices, NVRs and master servers.

use anyhow::{anyhow, bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use cvip::api::{self, EntityType, PlayState, ProfileType, PtzCmdType};
use cvip::Client;
use cvip::{Struct, Value};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::time::Duration;

mod out;
mod values;
use out::*;
use values::*;

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
    /// Unit address (not needed by `discover`).
    #[arg(long, global = true, env = "CVIP_HOST")]
    host: Option<String>,
    /// CVIP port.
    #[arg(long, global = true, default_value_t = 7110, env = "CVIP_PORT")]
    port: u16,
    /// Seconds to wait for each answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// The client GUID sent in GUID fields.
    #[arg(long, global = true, default_value = "00000001-0000-0000-0000-000000000001")]
    guid: String,
    /// Master server user (login is done for you).
    #[arg(long, global = true, default_value = "admin", env = "CVIP_USER")]
    user: String,
    /// Master server password (sent as MD5, as the seed says). Prefer
    /// CVIP_PASSWORD: a command line is visible to other users.
    #[arg(long, global = true, default_value = "admin", env = "CVIP_PASSWORD", hide_env_values = true)]
    password: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find units by Ping Request over UDP (broadcast and the common port).
    Discover {
        /// Where to send pings; default: 255.255.255.255 on 9990 and 7110.
        #[arg(long)]
        target: Vec<SocketAddr>,
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        /// Ping --host over TCP instead.
        #[arg(long)]
        tcp: bool,
    },
    /// system.describe, the services and the event groups.
    Describe,
    /// Every service with its description.
    Services,
    /// A service's properties: value, validation, access, units.
    Properties {
        /// The service, e.g. cviVideo.1.
        service: String,
    },
    /// Property values (all when no id is given).
    Get {
        /// The service, e.g. cviVideo.1.
        service: String,
        /// Property ids (none: all).
        ids: Vec<String>,
    },
    /// Set properties: ID=VALUE … (validated by the unit; all or nothing).
    Set {
        /// The service, e.g. cviVideo.1.
        service: String,
        /// ID=VALUE pairs.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Any method: `call cviStream.list '[{"GUID":"x"}]'`. JSON numbers are
    /// <int>, {"$uint":n}, {"$base64":"…"}, {"$datetime":"…"} and
    /// {"$double":x} pick other types.
    Call {
        /// The method, e.g. cviStream.list.
        method: String,
        /// The params as a JSON array (or one JSON value).
        params: Option<String>,
    },
    /// Subscribe and print events as they come (Ctrl-C to stop).
    Events {
        /// Event types: keepalive, external, motion, videoloss, recordloss,
        /// recorddisc (comma-separated) or a mask.
        #[arg(long = "type", default_value = "external,motion,videoloss,recordloss,recorddisc")]
        types: String,
        /// Channel (0 = all).
        #[arg(long, default_value_t = 0)]
        channel: u32,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// Raise one event first (simulators: cviEvent.trigger), e.g. motion.
        #[arg(long)]
        trigger: Option<String>,
    },
    /// Pan/tilt/zoom: `ptz pan -- -5`, `ptz stop`, `ptz set-preset 3`, `ptz setup --protocol pelcod`.
    Ptz {
        /// stop, pan, tilt, zoom, set-preset, goto-preset, leftup, rightup, setup, position.
        action: String,
        /// Signed speed 1–16 (direction by sign) or preset number.
        #[arg(allow_hyphen_values = true)]
        value: Option<i32>,
        /// The PTZ controller's id on the unit.
        #[arg(long, default_value_t = 1)]
        ptz_id: u32,
        /// The camera's address on the PTZ bus.
        #[arg(long, default_value_t = 1)]
        phy_addr: u32,
        /// For setup: pelcop, pelcod, panasonic.
        #[arg(long, default_value = "pelcod")]
        protocol: String,
    },
    /// Stream sessions: create, delete, list.
    Stream {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Recording sessions (NVR): create, delete, list, update.
    Record {
        #[command(subcommand)]
        cmd: RecordCmd,
    },
    /// Playback sessions (NVR).
    Playback {
        #[command(subcommand)]
        cmd: PlaybackCmd,
    },
    /// Recorded media (NVR): query by time/event, export a clip.
    Media {
        #[command(subcommand)]
        cmd: MediaCmd,
    },
    /// Update the firmware: send FILE over the data channel, follow the flash.
    Firmware {
        /// The firmware image to send.
        file: std::path::PathBuf,
        /// The image name the unit sees (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Master server: log in and print the AppGUID.
    Login,
    /// Master server: users and user groups.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Master server: entities (cameras, monitors, devices, maps, images, …).
    Entities {
        #[command(subcommand)]
        cmd: EntitiesCmd,
    },
    /// Master server: device profiles.
    Profiles {
        #[command(subcommand)]
        cmd: ProfilesCmd,
    },
    /// Master server: applications of camera/monitor entities.
    Applications {
        #[command(subcommand)]
        cmd: AppsCmd,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Start a stream session to an address.
    Create {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// The stream of that input (1 the first).
        #[arg(long, default_value_t = 1)]
        minor: u32,
        /// Destination ip:port.
        #[arg(long)]
        dest: SocketAddr,
        /// udp (RTP), tcp (RTP, RFC 4571) or raw (Annex B over TCP).
        #[arg(long, default_value = "udp")]
        transport: String,
        /// Keep the session across the unit's restarts.
        #[arg(long)]
        persistent: bool,
    },
    /// Stop a stream session.
    Delete {
        /// The session id (from `list`).
        id: u32,
    },
    /// The stream sessions.
    List,
    /// Start a stream to ourselves (raw Annex B over TCP), save it to a
    /// file or `-`, then stop it.
    Save {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// The stream of that input (1 the first).
        #[arg(long, default_value_t = 1)]
        minor: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Where to write (a file or `-`).
        #[arg(short, long)]
        output: String,
    },
}

#[derive(Subcommand)]
enum RecordCmd {
    /// Start recording an input.
    Create {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// The stream of that input (1 the first).
        #[arg(long, default_value_t = 1)]
        minor: u32,
        /// 0 always, 1 business hours, 2 nights (the simulator's).
        #[arg(long, default_value_t = 0)]
        schedule: u32,
        /// Keep the recording across the unit's restarts.
        #[arg(long)]
        persistent: bool,
    },
    /// Change a recording's schedule.
    Update {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// The stream of that input (1 the first).
        #[arg(long, default_value_t = 1)]
        minor: u32,
        /// The new schedule: 0 always, 1 business hours, 2 nights (the simulator's).
        #[arg(long)]
        schedule: u32,
    },
    /// Stop recording an input.
    Delete {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// The stream of that input (1 the first).
        #[arg(long, default_value_t = 1)]
        minor: u32,
    },
    /// The recordings.
    List,
}

#[derive(Subcommand)]
enum PlaybackCmd {
    /// Start a playback of a channel's recordings between two times
    /// (YYYYMMDDHHMMSS or YYYY-MM-DD HH:MM:SS).
    Create {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// Start (YYYYMMDDHHMMSS or YYYY-MM-DD HH:MM:SS).
        #[arg(long)]
        from: String,
        /// End (same forms).
        #[arg(long)]
        to: String,
        /// Where the unit sends the stream (ip:port; default: none, control only).
        #[arg(long)]
        dest: Option<SocketAddr>,
    },
    /// Stop a playback.
    Delete {
        /// The playback id (from `list`).
        id: u32,
    },
    /// The playbacks.
    List,
    /// pause, play, stop, fastforward, fastbackward, stepforward, stepbackward.
    State {
        /// The playback id.
        id: u32,
        /// The new state.
        state: String,
        /// Speed for fast forward/backward.
        #[arg(long, default_value_t = 1)]
        speed: u32,
    },
    /// Jump to a position.
    Seek {
        /// The playback id.
        id: u32,
        /// Seconds from the playback's start.
        position: u32,
    },
    /// A playback's length in seconds.
    Length {
        /// The playback id.
        id: u32,
    },
    /// A playback's state and position.
    Status {
        /// The playback id.
        id: u32,
    },
    /// Recorded spans with events between two times.
    Events {
        /// The video input (from 1).
        #[arg(long, default_value_t = 1)]
        major: u32,
        /// Start (YYYYMMDDHHMMSS or YYYY-MM-DD HH:MM:SS).
        #[arg(long)]
        from: String,
        /// End (same forms).
        #[arg(long)]
        to: String,
        /// Event types, comma-separated (motion, videoloss, …).
        #[arg(long = "type", default_value = "motion,videoloss")]
        types: String,
    },
}

#[derive(Subcommand)]
enum MediaCmd {
    /// Clips of a channel in a time range, optionally with an event type.
    Query {
        /// The video input (from 1; 0: all).
        #[arg(long, default_value_t = 0)]
        major: u32,
        /// Start (YYYYMMDDHHMMSS or YYYY-MM-DD HH:MM:SS).
        #[arg(long)]
        from: Option<String>,
        /// End (same forms).
        #[arg(long)]
        to: Option<String>,
        /// Only clips with these event types (comma-separated).
        #[arg(long = "type")]
        types: Option<String>,
        /// Page (from 0); --all fetches every page.
        #[arg(long, default_value_t = 0)]
        page: u32,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Export a clip: the unit connects back to us over the data channel.
    Export {
        /// The clip id (from `media query`).
        clip: u32,
        /// Where to write the clip.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Our address as the unit should dial it (default: the address
        /// our connection to the unit uses).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Expected size, for the progress bar (from `media query`).
        #[arg(long)]
        size: Option<u64>,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// The users.
    List,
    /// Add a user.
    Add {
        /// The user's name.
        name: String,
        /// The new user's password (the global --password is the login's).
        #[arg(long = "new-password", default_value = "")]
        new_password: String,
        /// A note kept with the user.
        #[arg(long, default_value = "")]
        description: String,
        /// Privilege bits or names: streaming,playback,snapshot,record,housekeeping,template,systemexit.
        #[arg(long, default_value = "streaming")]
        privilege: String,
        /// The user's priority (the unit keeps it; reserved by the protocol).
        #[arg(long, default_value_t = 5)]
        priority: u32,
        /// The user group (0: none).
        #[arg(long, default_value_t = 0)]
        group: u32,
    },
    /// Change a user.
    Update {
        /// The user id (from `list`).
        id: u32,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new password.
        #[arg(long = "new-password")]
        new_password: Option<String>,
        /// New privileges (bits or names, as for `add`).
        #[arg(long)]
        privilege: Option<String>,
        /// A new user group.
        #[arg(long)]
        group: Option<u32>,
    },
    /// Delete a user.
    Delete {
        /// The user id.
        id: u32,
    },
    /// The user groups.
    Groups,
    /// Add a user group.
    AddGroup {
        /// The group's name.
        name: String,
        /// A note kept with the group.
        #[arg(long, default_value = "")]
        description: String,
        /// Privileges (bits or names, as for `add`).
        #[arg(long, default_value = "streaming")]
        privilege: String,
    },
    /// Delete a user group.
    DeleteGroup {
        /// The group id.
        id: u32,
    },
    /// Give a user an entity.
    Mount {
        /// The user id.
        user_id: u32,
        /// The entity id.
        entity: u32,
        /// The entity type (camera, monitor, …).
        #[arg(long, default_value = "camera")]
        r#type: String,
    },
    /// Take an entity from a user.
    Unmount {
        /// The user id.
        user_id: u32,
        /// The entity id.
        entity: u32,
        /// The entity type (camera, monitor, …).
        #[arg(long, default_value = "camera")]
        r#type: String,
    },
}

#[derive(Subcommand)]
enum EntitiesCmd {
    /// Every entity of a type (all pages).
    List {
        /// The entity type (camera, monitor, device, map, image, …).
        #[arg(default_value = "camera")]
        r#type: String,
    },
    /// Add: `entities add camera --name Door --prop PhyAddr=3 --prop Capability=1`.
    Add {
        /// The entity type.
        r#type: String,
        /// The entity's name.
        #[arg(long)]
        name: String,
        /// A note kept with it.
        #[arg(long, default_value = "")]
        description: String,
        /// Its entity group (0: none).
        #[arg(long, default_value_t = 0)]
        group: u32,
        /// A property, NAME=VALUE (repeat for more).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// An image entity's file (sent in chunks of at most 1 MiB).
        #[arg(long)]
        image: Option<std::path::PathBuf>,
    },
    /// Change an entity.
    Update {
        /// The entity id.
        id: u32,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A property to change, NAME=VALUE (repeat for more).
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    /// Delete an entity.
    Delete {
        /// The entity type.
        r#type: String,
        /// The entity id.
        id: u32,
    },
    /// The entity groups of a type.
    Groups {
        /// The entity type.
        r#type: String,
    },
    /// Add an entity group.
    AddGroup {
        /// The entity type.
        r#type: String,
        /// The group's name.
        name: String,
        /// A note kept with the group.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Version and last change of a type's entity list.
    Query {
        /// The entity type.
        r#type: String,
    },
    /// An entity's services and their profiles.
    Services {
        /// The entity id.
        id: u32,
    },
    /// Bind a profile to an entity's service.
    SetService {
        /// The entity id.
        id: u32,
        /// The service (as `services` lists them).
        service: String,
        /// The profile id to use for it.
        profile: u32,
    },
}

#[derive(Subcommand)]
enum ProfilesCmd {
    /// The profiles of a type.
    List {
        /// serialport, schedule, videoencoder, audioencoder (all when absent).
        r#type: Option<String>,
    },
    /// Add a profile.
    Add {
        /// The profile type (serialport, schedule, videoencoder, audioencoder).
        r#type: String,
        /// A property, NAME=VALUE (repeat for more).
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    /// Change a profile.
    Update {
        /// The profile type.
        r#type: String,
        /// The profile id.
        id: u32,
        /// A property to change, NAME=VALUE (repeat for more).
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    /// Delete a profile.
    Delete {
        /// The profile type.
        r#type: String,
        /// The profile id.
        id: u32,
    },
}

#[derive(Subcommand)]
enum AppsCmd {
    /// An entity's applications.
    List {
        /// The entity type (camera or monitor).
        r#type: String,
        /// The entity id.
        entity: u32,
    },
    /// Add an application to an entity.
    Add {
        /// The entity type (camera or monitor).
        r#type: String,
        /// The entity id.
        entity: u32,
        /// ptzcontrol, videostreaming, videoplayback, videorecording.
        app: String,
        /// A property, NAME=VALUE (repeat for more).
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    /// Remove an entity's application(s).
    Delete {
        /// The entity type (camera or monitor).
        r#type: String,
        /// The entity id.
        entity: u32,
        /// The application (none: all of the entity's).
        app: Option<String>,
    },
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let out = Out { json: a.conn.json };
    let c = &a.conn;
    if let Cmd::Discover { target, wait, tcp } = &a.cmd {
        let found = if *tcp {
            let host = c.host.as_deref().ok_or_else(|| anyhow!("--tcp pings --host"))?;
            let addr: SocketAddr =
                tokio::net::lookup_host((host, c.port)).await?.next().ok_or_else(|| anyhow!("{host}: no address"))?;
            vec![cvip::ping::Found {
                from: addr,
                response: cvip::ping::ping_tcp(addr, Duration::from_secs_f64(*wait)).await?,
            }]
        } else {
            let targets = if target.is_empty() {
                vec!["255.255.255.255:9990".parse()?, "255.255.255.255:7110".parse()?]
            } else {
                target.clone()
            };
            cvip::ping::discover_udp(&targets, Duration::from_secs_f64(*wait)).await?
        };
        let rows: Vec<Struct> = found
            .iter()
            .map(|f| {
                Struct::new()
                    .with("from", f.from.to_string())
                    .with("ip", f.response.ip.to_string())
                    .with("port", f.response.port as u32)
                    .with("guid", f.response.guid_string())
                    .with("manufacturer", f.response.manufacturer as u32)
                    .with("product", f.response.product as u32)
                    .with("rebooted", f.response.rebooted)
            })
            .collect();
        if rows.is_empty() && !out.json {
            println!("no unit answered");
            return Ok(());
        }
        out.rows(rows);
        return Ok(());
    }
    let (client, mut events) = connect(c).await?;
    let guid = c.guid.as_str();
    let master = || async { client.login(guid, &c.user, &c.password, 1).await.context("master server login") };
    match a.cmd {
        Cmd::Discover { .. } => unreachable!(),
        Cmd::Describe => {
            let d = client.system_describe().await?;
            let services = client.list_services().await?;
            let groups = client.list_events(None).await?;
            let v = d.to_struct().with("services", Value::Array(services.into_iter().map(Value::Str).collect())).with(
                "eventGroups",
                Value::Array(
                    groups.into_iter().map(|(i, n)| Struct::new().with("id", i).with("name", n).into()).collect(),
                ),
            );
            out.value(&Value::Struct(v));
        }
        Cmd::Services => {
            let mut rows = Vec::new();
            for s in client.list_services().await? {
                let d = client.describe(&s).await?;
                rows.push(d.to_struct());
            }
            out.rows(rows);
        }
        Cmd::Properties { service } => out.rows(client.list_properties(&service).await?),
        Cmd::Get { service, ids } => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            out.value(&Value::Struct(client.get_properties(&service, &ids).await?));
        }
        Cmd::Set { service, values } => {
            let s = props(&values)?;
            client.set_properties(&service, s).await?;
            out.ok(&format!("{service}: {} propert{} set", values.len(), if values.len() == 1 { "y" } else { "ies" }));
        }
        Cmd::Call { method, params } => {
            let params = match params {
                None => vec![],
                Some(p) => {
                    let j: Json = serde_json::from_str(&p).with_context(|| format!("params {p:?} are not JSON"))?;
                    match from_json(&j)? {
                        Value::Array(a) => a,
                        v => vec![v],
                    }
                }
            };
            let r = client.call(&method, params).await?;
            out.value(&Value::Array(r));
        }
        Cmd::Events { types, channel, count, seconds, trigger } => {
            let mask = api::parse_event_mask(&types).ok_or_else(|| anyhow!("--type {types:?}: unknown event type"))?;
            client.event_subscribe(mask, channel).await?;
            if !out.json {
                eprintln!(
                    "subscribed to {} on {}",
                    api::event_mask_names(mask),
                    if channel == 0 { "every channel".into() } else { format!("channel {channel}") }
                );
            }
            if let Some(t) = trigger {
                let ty = api::parse_event_mask(&t).ok_or_else(|| anyhow!("--trigger {t:?}: unknown event type"))?;
                client
                    .call_ack(
                        "cviEvent.trigger",
                        vec![Struct::new().with("Type", ty).with("Id", channel.max(1)).with("info", 1).into()],
                    )
                    .await?;
            }
            let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
            let mut n = 0u64;
            loop {
                let next = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, events.recv()).await.ok().flatten(),
                        None => events.recv().await,
                    }
                };
                let ev = tokio::select! {
                    e = next => e,
                    _ = tokio::signal::ctrl_c() => None,
                };
                let Some(ev) = ev else { break };
                let body = ev.params.first().cloned().unwrap_or(Value::Nil);
                if out.json {
                    println!("{}", json!({"method": ev.method, "event": to_json(&body)}));
                } else if let Some(s) = body.as_struct() {
                    let nt = api::Notify::from_struct(s);
                    println!(
                        "{} {} channel {} {} ({})",
                        nt.time,
                        api::event_mask_names(nt.event_type),
                        nt.id,
                        if nt.info == 1 { "on" } else { "off" },
                        nt.event_guid
                    );
                } else {
                    println!("{}: {body}", ev.method);
                }
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
        }
        Cmd::Ptz { action, value, ptz_id, phy_addr, protocol } => {
            let a = action.to_ascii_lowercase().replace(['-', '_'], "");
            match a.as_str() {
                "setup" => {
                    let p = api::PtzProtocol::parse(&protocol)
                        .ok_or_else(|| anyhow!("--protocol {protocol:?}: expected pelcop, pelcod or panasonic"))?;
                    client.ptz_set(&api::PtzSetup { ptz_id, protocol: p.code(), user_priority: 1 }).await?;
                    out.ok(&format!("PTZ port {ptz_id}: {p}"));
                }
                "position" => {
                    out.value(&Value::Struct(client.get_properties("cviPtz", &[]).await?));
                }
                _ => {
                    let ty = match a.as_str() {
                        "stop" => PtzCmdType::Stop,
                        "pan" => PtzCmdType::Pan,
                        "tilt" => PtzCmdType::Tilt,
                        "zoom" => PtzCmdType::Zoom,
                        "setpreset" => PtzCmdType::SetPreset,
                        "gotopreset" | "preset" => PtzCmdType::GotoPreset,
                        "leftup" | "leftuprightdown" => PtzCmdType::LeftUpRightDown,
                        "rightup" | "rightupleftdown" => PtzCmdType::RightUpLeftDown,
                        other => bail!("ptz {other:?}: expected stop, pan, tilt, zoom, set-preset, goto-preset, leftup, rightup, setup or position"),
                    };
                    let data = match (ty, value) {
                        (PtzCmdType::Stop, v) => v.unwrap_or(0),
                        (_, Some(v)) => v,
                        (_, None) => bail!("ptz {action}: needs a signed speed 1–16 or a preset number"),
                    };
                    client
                        .ptz_cmd(&api::PtzCommand {
                            guid: guid.into(),
                            ptz_id,
                            phy_addr,
                            user_priority: 1,
                            cmd_type: ty.code(),
                            cmd_data: data,
                        })
                        .await?;
                    out.ok(&format!("PTZ {ty} {data}"));
                }
            }
        }
        Cmd::Stream { cmd } => match cmd {
            SessionCmd::Create { major, minor, dest, transport, persistent } => {
                let s = api::StreamSession {
                    guid: guid.into(),
                    major,
                    minor,
                    persistent,
                    dest_ip: dest.ip().to_string(),
                    dest_port: dest.port() as u32,
                    dest_transport: transport,
                    ..Default::default()
                };
                let r = client.stream_create(&s).await?;
                out.value(&Value::Struct(Struct::new().with("StreamID", r.stream_id).with("MediaType", r.media_type)));
            }
            SessionCmd::Delete { id } => {
                client.stream_delete(guid, id).await?;
                out.ok(&format!("stream {id} deleted"));
            }
            SessionCmd::List => out.rows(client.stream_list("").await?.iter().map(|s| s.to_struct()).collect()),
            SessionCmd::Save { major, minor, seconds, output } => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let l = tokio::net::TcpListener::bind(SocketAddr::new(client.local.ip(), 0)).await?;
                let me = l.local_addr()?;
                let s = api::StreamSession {
                    guid: guid.into(),
                    major,
                    minor,
                    dest_ip: me.ip().to_string(),
                    dest_port: me.port() as u32,
                    dest_transport: "raw".into(),
                    ..Default::default()
                };
                let id = client.stream_create(&s).await?.stream_id;
                let (mut sock, _) = tokio::time::timeout(Duration::from_secs(c.timeout.max(1)), l.accept())
                    .await
                    .map_err(|_| anyhow!("the unit did not connect to {me} within {} s", c.timeout))??;
                let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = if output == "-" {
                    Box::new(tokio::io::stdout())
                } else {
                    Box::new(tokio::fs::File::create(&output).await.with_context(|| format!("cannot create {output}"))?)
                };
                let pb = bar(None, &format!("stream {id}"), out.json || output == "-");
                let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = tokio::select! {
                        n = sock.read(&mut buf) => n?,
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = tokio::signal::ctrl_c() => break,
                    };
                    if n == 0 {
                        break;
                    }
                    sink.write_all(&buf[..n]).await?;
                    total += n as u64;
                    pb.set_position(total);
                }
                sink.flush().await?;
                pb.finish_and_clear();
                client.stream_delete(guid, id).await?;
                if output != "-" {
                    out.value(&Value::Struct(
                        Struct::new()
                            .with("StreamID", id)
                            .with("Bytes", total.to_string())
                            .with("File", output.as_str()),
                    ));
                }
            }
        },
        Cmd::Record { cmd } => match cmd {
            RecordCmd::Create { major, minor, schedule, persistent } => {
                let r = api::RecordSession {
                    guid: guid.into(),
                    major,
                    minor,
                    schedule_profile_id: schedule,
                    persistent,
                    ..Default::default()
                };
                client.record_create(&r).await?;
                out.ok(&format!("recording {major}/{minor}"));
            }
            RecordCmd::Update { major, minor, schedule } => {
                let r = api::RecordSession {
                    guid: guid.into(),
                    major,
                    minor,
                    schedule_profile_id: schedule,
                    ..Default::default()
                };
                client.record_update(&r).await?;
                out.ok(&format!("recording {major}/{minor}: schedule {schedule}"));
            }
            RecordCmd::Delete { major, minor } => {
                let r = api::RecordSession { guid: guid.into(), major, minor, ..Default::default() };
                client.record_delete(&r).await?;
                out.ok(&format!("recording {major}/{minor} stopped"));
            }
            RecordCmd::List => out.rows(client.record_list(guid).await?.iter().map(|s| s.to_struct()).collect()),
        },
        Cmd::Playback { cmd } => {
            match cmd {
                PlaybackCmd::Create { major, from, to, dest } => {
                    let p = api::PlaybackSession {
                        guid: guid.into(),
                        major,
                        start_time: when(&from)?,
                        end_time: when(&to)?,
                        dest_ip: dest.map(|d| d.ip().to_string()).unwrap_or_default(),
                        dest_port: dest.map(|d| d.port() as u32).unwrap_or(0),
                        dest_transport: "udp".into(),
                        ..Default::default()
                    };
                    let r = client.playback_create(&p).await?;
                    let len = client.playback_length(guid, r.playback_id).await?;
                    out.value(&Value::Struct(Struct::new().with("PlaybackID", r.playback_id).with("Length", len)));
                }
                PlaybackCmd::Delete { id } => {
                    client.playback_delete(guid, id).await?;
                    out.ok(&format!("playback {id} deleted"));
                }
                PlaybackCmd::List => {
                    out.rows(client.playback_list(guid).await?.iter().map(|s| s.to_struct()).collect())
                }
                PlaybackCmd::State { id, state, speed } => {
                    let st = PlayState::parse(&state.replace(['-', '_'], "")).ok_or_else(|| anyhow!("{state:?}: expected pause, play, stop, fastforward, fastbackward, stepforward or stepbackward"))?;
                    client.playback_setstate(guid, id, st, speed).await?;
                    out.ok(&format!("playback {id}: {st} ×{speed}"));
                }
                PlaybackCmd::Seek { id, position } => {
                    client.playback_seek(guid, id, position).await?;
                    out.ok(&format!("playback {id}: frame {position}"));
                }
                PlaybackCmd::Length { id } => {
                    let l = client.playback_length(guid, id).await?;
                    out.value(&Value::Struct(Struct::new().with("Length", l)));
                }
                PlaybackCmd::Status { id } => {
                    let s = client.playback_status(guid, id).await?;
                    let mut st = s.to_struct();
                    st.push("StateName", PlayState::from_code(s.state).to_string());
                    out.value(&Value::Struct(st));
                }
                PlaybackCmd::Events { major, from, to, types } => {
                    let mask =
                        api::parse_event_mask(&types).ok_or_else(|| anyhow!("--type {types:?}: unknown event type"))?;
                    let spans = client.playback_query_events(guid, major, 1, &when(&from)?, &when(&to)?, mask).await?;
                    out.rows(spans.iter().map(|s| s.to_struct()).collect());
                }
            }
        }
        Cmd::Media { cmd } => match cmd {
            MediaCmd::Query { major, from, to, types, page, all } => {
                let mut q = api::MediaQuery { guid: guid.into(), major, page, ..Default::default() };
                if let Some(f) = from {
                    q.start_date = when(&f)?;
                }
                if let Some(t) = to {
                    q.end_date = when(&t)?;
                }
                if let Some(t) = types {
                    q.event_type =
                        api::parse_event_mask(&t).ok_or_else(|| anyhow!("--type {t:?}: unknown event type"))?;
                }
                let mut clips = Vec::new();
                loop {
                    let pg = client.media_query(&q).await?;
                    clips.extend(pg.items);
                    if !all || pg.is_last {
                        break;
                    }
                    q.page += 1;
                }
                out.rows(clips.iter().map(|c| c.to_struct()).collect());
            }
            MediaCmd::Export { clip, output, listen, size } => {
                let bind = match listen {
                    Some(l) => l,
                    None => SocketAddr::new(client.local.ip(), 0),
                };
                let l =
                    tokio::net::TcpListener::bind(bind).await.with_context(|| format!("cannot listen on {bind}"))?;
                let me = l.local_addr()?;
                let auth = format!("ivr-export-{}-{clip}", std::process::id());
                client
                    .media_export(&api::Export {
                        guid: guid.into(),
                        clip_id: clip,
                        server_ip: me.ip().to_string(),
                        server_port: me.port() as u32,
                        authentication_id: auth.clone(),
                    })
                    .await?;
                let (s, _) = tokio::time::timeout(Duration::from_secs(c.timeout.max(1)), l.accept())
                    .await
                    .map_err(|_| anyhow!("the unit did not connect back to {me} within {} s", c.timeout))??;
                let mut r = tokio_util::codec::FramedRead::new(s, cvip::PacketCodec::default());
                let got = cvip::data::accept(&mut r).await?;
                if got != auth {
                    bail!("the data channel presented authenticationId {got:?}, not ours");
                }
                // Written to a temporary name and renamed when complete:
                // a broken transfer leaves no file that looks whole.
                let tmp = output.with_extension("part");
                let mut f =
                    tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
                let pb = bar(size, &format!("clip {clip}"), out.json);
                let n = cvip::data::receive(&mut r, &mut f, |n| pb.set_position(n)).await?;
                pb.finish_and_clear();
                drop(f);
                tokio::fs::rename(&tmp, &output).await?;
                out.value(&Value::Struct(
                    Struct::new()
                        .with("ClipID", clip)
                        .with("Bytes", n.to_string())
                        .with("File", output.display().to_string()),
                ));
            }
        },
        Cmd::Firmware { file, name } => {
            let data = tokio::fs::read(&file).await.with_context(|| format!("cannot read {}", file.display()))?;
            let name =
                name.unwrap_or_else(|| file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
            let auth = format!("ivr-fw-{}", std::process::id());
            let s = Struct::new()
                .with("imageFileId", name.as_str())
                .with("authenticationId", auth.as_str())
                .with("imageSize", data.len() as u32);
            // The seed's shape (array of one-member structs), plus imageSize.
            let shaped = Value::Array(s.iter().map(|(k, v)| Struct::new().with(k, v.clone()).into()).collect());
            client.call_ack("cviUpdateFirmware.startFirmwareUpdate", vec![shaped]).await?;
            let sock = tokio::net::TcpStream::connect(client.peer).await?;
            let pb = bar(Some(data.len() as u64), "upload", out.json);
            cvip::data::send(sock, &auth, &data[..], |n| pb.set_position(n)).await?;
            pb.finish_and_clear();
            let pb = bar(Some(data.len() as u64), "flash", out.json);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let last = loop {
                let p = client.firmware_progress().await?;
                if p.state == "FWUPDFLASHING" {
                    pb.set_position(p.bytes as u64);
                }
                if matches!(p.state.as_str(), "FWUPDDONE" | "FWUPDFAILED") {
                    break p;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("firmware: still {} after 120 s", p.state);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            pb.finish_and_clear();
            if last.state == "FWUPDFAILED" {
                bail!("firmware update failed: {}", last.status);
            }
            let v = client.get_properties("cviUnit", &["unitFirmwareVersion"]).await?;
            out.value(&Value::Struct(
                Struct::new()
                    .with("state", last.state)
                    .with("bytes", data.len().to_string())
                    .with("unitFirmwareVersion", v.get("unitFirmwareVersion").cloned().unwrap_or(Value::Nil)),
            ));
        }
        Cmd::Login => {
            let m = master().await?;
            out.value(&Value::Struct(Struct::new().with("AppGUID", m.app_guid.as_str())));
            m.logout().await?;
        }
        Cmd::Users { cmd } => {
            let m = master().await?;
            match cmd {
                UsersCmd::List => out.rows(
                    m.list_users()
                        .await?
                        .iter()
                        .map(|u| {
                            let mut s = u.to_struct();
                            s.remove("UserPassword");
                            s
                        })
                        .collect(),
                ),
                UsersCmd::Add { name, new_password: password, description, privilege: p, priority, group } => {
                    let id = m
                        .add_user(&api::User {
                            name,
                            password,
                            description,
                            priority,
                            privilege: privilege(&p)?,
                            group_id: group,
                            ..Default::default()
                        })
                        .await?;
                    out.value(&Value::Struct(Struct::new().with("UserID", id)));
                }
                UsersCmd::Update { id, name, new_password: password, privilege: p, group } => {
                    let mut u = m
                        .list_users()
                        .await?
                        .into_iter()
                        .find(|u| u.user_id == id)
                        .ok_or_else(|| anyhow!("no user {id}"))?;
                    if let Some(n) = name {
                        u.name = n;
                    }
                    u.password = password.unwrap_or_default();
                    if let Some(p) = p {
                        u.privilege = privilege(&p)?;
                    }
                    if let Some(g) = group {
                        u.group_id = g;
                    }
                    m.update_user(&u).await?;
                    out.ok(&format!("user {id} updated"));
                }
                UsersCmd::Delete { id } => {
                    m.delete_user(id).await?;
                    out.ok(&format!("user {id} deleted"));
                }
                UsersCmd::Groups => out.rows(m.list_groups().await?.iter().map(|g| g.to_struct()).collect()),
                UsersCmd::AddGroup { name, description, privilege: p } => {
                    let id = m
                        .add_group(&api::UserGroup { name, description, privilege: privilege(&p)?, group_id: 0 })
                        .await?;
                    out.value(&Value::Struct(Struct::new().with("GroupID", id)));
                }
                UsersCmd::DeleteGroup { id } => {
                    m.delete_group(id).await?;
                    out.ok(&format!("group {id} deleted"));
                }
                UsersCmd::Mount { user_id: user, entity, r#type } => {
                    m.mount(user, entity, entity_type(&r#type)?).await?;
                    out.ok(&format!("entity {entity} mounted on user {user}"));
                }
                UsersCmd::Unmount { user_id: user, entity, r#type } => {
                    m.unmount(user, entity, entity_type(&r#type)?).await?;
                    out.ok(&format!("entity {entity} unmounted from user {user}"));
                }
            }
            m.logout().await?;
        }
        Cmd::Entities { cmd } => {
            let m = master().await?;
            match cmd {
                EntitiesCmd::List { r#type } => {
                    out.rows(m.entity_list_all(entity_type(&r#type)?).await?.iter().map(|e| e.to_struct()).collect())
                }
                EntitiesCmd::Add { r#type, name, description, group, props: p, image } => {
                    let ty = entity_type(&r#type)?;
                    let mut e = api::Entity {
                        entity_type: ty.code(),
                        group_id: group,
                        name,
                        description,
                        properties: props(&p)?,
                        ..Default::default()
                    };
                    let id = match image {
                        None => m.entity_add(&e).await?,
                        Some(path) => {
                            let data = tokio::fs::read(&path)
                                .await
                                .with_context(|| format!("cannot read {}", path.display()))?;
                            let chunk = 750 * 1024;
                            let pb = bar(Some(data.len() as u64), "image", out.json);
                            let mut chunks = data.chunks(chunk);
                            let first = chunks.next().unwrap_or(&[]);
                            e.properties.set("ImageSize", data.len() as u32);
                            e.properties.set("ImageData", Value::Base64(first.to_vec()));
                            let id = m.entity_add(&e).await?;
                            pb.set_position(first.len() as u64);
                            for c in chunks {
                                let mut s = Struct::new()
                                    .with("EntityTypeID", ty)
                                    .with("EntityID", id)
                                    .with("IsLastPage", false);
                                s.push("ImageData", Value::Base64(c.to_vec()));
                                m.call("cviEntity.add", s).await?;
                                pb.inc(c.len() as u64);
                            }
                            pb.finish_and_clear();
                            id
                        }
                    };
                    out.value(&Value::Struct(Struct::new().with("EntityID", id)));
                }
                EntitiesCmd::Update { id, name, props: p } => {
                    let mut s = Struct::new().with("EntityID", id);
                    if let Some(n) = name {
                        s.push("EntityName", n);
                    }
                    s.0.extend(props(&p)?.0);
                    m.call("cviEntity.update", s).await?;
                    out.ok(&format!("entity {id} updated"));
                }
                EntitiesCmd::Delete { r#type, id } => {
                    m.entity_delete(entity_type(&r#type)?, id).await?;
                    out.ok(&format!("entity {id} deleted"));
                }
                EntitiesCmd::Groups { r#type } => {
                    out.rows(m.entity_groups(entity_type(&r#type)?).await?.iter().map(|g| g.to_struct()).collect())
                }
                EntitiesCmd::AddGroup { r#type, name, description } => {
                    let id = m
                        .entity_add_group(&api::EntityGroup {
                            entity_type: entity_type(&r#type)?.code(),
                            name,
                            description,
                            group_id: 0,
                        })
                        .await?;
                    out.value(&Value::Struct(Struct::new().with("GroupID", id)));
                }
                EntitiesCmd::Query { r#type } => {
                    out.value(&Value::Struct(m.entity_query(entity_type(&r#type)?).await?.to_struct()))
                }
                EntitiesCmd::Services { id } => out.rows(m.entity_services(id).await?),
                EntitiesCmd::SetService { id, service, profile } => {
                    m.entity_update_service(id, &service, profile).await?;
                    out.ok(&format!("entity {id}: service {service} uses profile {profile}"));
                }
            }
            m.logout().await?;
        }
        Cmd::Profiles { cmd } => {
            let m = master().await?;
            match cmd {
                ProfilesCmd::List { r#type } => {
                    let rows = match r#type {
                        Some(t) => m.profiles(profile_type(&t)?).await?,
                        None => {
                            let mut all = Vec::new();
                            for t in ProfileType::ALL {
                                all.extend(m.profiles(*t).await?);
                            }
                            all
                        }
                    };
                    out.rows(rows);
                }
                ProfilesCmd::Add { r#type, props: p } => {
                    let id = m.profile_add(profile_type(&r#type)?, props(&p)?).await?;
                    out.value(&Value::Struct(Struct::new().with("ProfileID", id)));
                }
                ProfilesCmd::Update { r#type, id, props: p } => {
                    m.profile_update(profile_type(&r#type)?, id, props(&p)?).await?;
                    out.ok(&format!("profile {id} updated"));
                }
                ProfilesCmd::Delete { r#type, id } => {
                    m.profile_delete(profile_type(&r#type)?, id).await?;
                    out.ok(&format!("profile {id} deleted"));
                }
            }
            m.logout().await?;
        }
        Cmd::Applications { cmd } => {
            let m = master().await?;
            let app = |s: &str| {
                api::ApplicationType::parse(&s.replace(['-', '_'], "")).ok_or_else(|| {
                    anyhow!("{s:?}: expected ptzcontrol, videostreaming, videoplayback, videorecording or 1–4")
                })
            };
            match cmd {
                AppsCmd::List { r#type, entity } => out.rows(m.applications(entity_type(&r#type)?, entity).await?),
                AppsCmd::Add { r#type, entity, app: a, props: p } => {
                    m.application_add(entity_type(&r#type)?, entity, app(&a)?, props(&p)?).await?;
                    out.ok(&format!("entity {entity}: application {a} added"));
                }
                AppsCmd::Delete { r#type, entity, app: a } => {
                    let a = a.map(|a| app(&a)).transpose()?;
                    m.application_delete(entity_type(&r#type)?, entity, a).await?;
                    out.ok(&format!("entity {entity}: application deleted"));
                }
            }
            m.logout().await?;
        }
    }
    Ok(())
}
