//! dvrip:// and cvip:// channels against the simulators over loopback:
//! one connection per device, every IVT method and event on the device
//! (read back from the simulator), alarms, recordings judged by ffprobe,
//! a device that goes away and comes back, and devices that refuse.

mod common;

use ivr_edge::{ChannelBackend, EdgeConfig};
use ivr_rpc::catalogue::{ChannelState, DetectConfig, IvtEvent, IvtRequest, Quality, StartCloudRecord};
use ivr_sim::clips::ClipCodec;
use std::sync::Arc;
use std::time::Duration;

const PW: &str = "s3cret";

async fn dvrip_sim(channels: u32) -> ivr_sim::dvrip::Running {
    let cfg = ivr_sim::dvrip::SimConfig {
        password: PW.into(),
        channels,
        device_type: if channels > 1 { "NVR".into() } else { "IPC".into() },
        codec: ClipCodec::H264,
        reboot_time: Duration::from_secs(2),
        ..Default::default()
    };
    ivr_sim::dvrip::start(cfg, "127.0.0.1:0".parse().unwrap(), None).await.unwrap()
}

async fn cvip_sim() -> ivr_sim::cvip::Running {
    let cfg = ivr_sim::cvip::CvipConfig { channels: 2, ..Default::default() };
    ivr_sim::cvip::start(cfg, "127.0.0.1:0".parse().unwrap(), None).await.unwrap()
}

fn edge_channels(sources: &[&str]) -> Vec<Arc<dyn ChannelBackend>> {
    let mut toml = "[cloud]\nurl = \"ws://127.0.0.1:9/ivc\"\nlogin_code = \"t\"\nlogin_passwd = \"t\"\n".to_owned();
    for (i, s) in sources.iter().enumerate() {
        toml.push_str(&format!("\n[[channels]]\nchannel = {i}\nsource = \"{s}\"\n"));
    }
    let cfg = EdgeConfig::parse(&toml).unwrap();
    ivr_edge::channels(&cfg, &ivr_rpc::net::Dialer::default()).unwrap()
}

async fn wait_state(ch: &dyn ChannelBackend, want: ChannelState, secs: u64) {
    for _ in 0..secs * 10 {
        if ch.state() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("channel {} is {:?}, not {want:?} after {secs} s", ch.channel(), ch.state());
}

fn detect(channel: u32, rect: Option<[u8; 8]>) -> DetectConfig {
    DetectConfig { channel, enable: true, start: 8 * 3600, end: 18 * 3600, sensitivity: 100, delay: 5, rect }
}

fn record(channel: u32, cbk: &str, session: &str, quality: Quality) -> StartCloudRecord {
    StartCloudRecord {
        session_id: session.into(),
        channel,
        quality,
        max_bitrate: 0,
        seg_duration: 2,
        seg_max_size: 8 << 20,
        seg_max_count: 10,
        prerecord_seconds: 0,
        start_ts: 0,
        cbk_url: cbk.into(),
    }
}

/// Records ~5 s of `ch` and judges every segment with ffprobe.
async fn records_and_plays(ch: &dyn ChannelBackend, width: u64) {
    let (base, store) = common::server().await;
    let session = format!("session-of-channel-{}-abcdef", ch.channel());
    ch.request(&IvtRequest::StartCloudRecord(record(ch.channel(), &format!("{base}/cbk"), &session, Quality::Sd)))
        .await
        .unwrap();
    assert_eq!(ch.record_session().as_deref(), Some(session.as_str()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    ch.request(&IvtRequest::StopCloudRecord { session_id: session.clone(), channel: ch.channel() }).await.unwrap();
    assert_eq!(ch.record_session(), None);
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = store.lock().unwrap().stored.clone();
        let total: f64 = stored.iter().map(|(d, _)| d["duration"].as_f64().unwrap()).sum();
        if total >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = std::env::temp_dir().join(format!("ivr-edge-devices-{}-{}", std::process::id(), ch.channel()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!stored.is_empty(), "no segment uploaded");
    let mut all = Vec::new();
    for (i, (desc, ts)) in stored.iter().enumerate() {
        assert_eq!(desc["seq"], i as u64, "in order: {desc}");
        assert_eq!(desc["size"], ts.len() as u64);
        all.extend_from_slice(ts);
    }
    let p = dir.join("all.ts");
    std::fs::write(&p, &all).unwrap();
    let (frames, secs) = common::ffprobe_seconds(&p, width);
    assert!(secs >= 3.5, "{frames} frames recorded");
    ivr_testkit::decodes_cleanly(&p).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dvrip_nvr_is_one_login_and_every_method_reaches_it() {
    let nvr = dvrip_sim(4).await;
    let a = nvr.addr;
    let chans =
        edge_channels(&[&format!("dvrip://admin:{PW}@{a}/0"), &format!("dvrip://admin:{PW}@{a}/2?stream=extra")]);
    for c in &chans {
        wait_state(c.as_ref(), ChannelState::Online, 10).await;
    }
    assert_eq!(nvr.server.sessions().len(), 1, "one login for both channels");
    let (c0, c2) = (&chans[0], &chans[1]);

    // PTZ: the movement reaches device channel 2, stop stops it.
    c2.event(&IvtEvent::CtrlPtz { channel: 1, op: "right".into(), speed: 100 }).await;
    let p = nvr.sim.ptz_state(2).unwrap();
    assert_eq!(p.moving.map(|m| (m.0, m.2)), Some((dvrip::messages::PtzCommand::Right, 8)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    c2.event(&IvtEvent::CtrlPtz { channel: 1, op: "stop".into(), speed: 0 }).await;
    let p = nvr.sim.ptz_state(2).unwrap();
    assert!(p.moving.is_none() && p.pan > 0, "{p:?}");
    assert!(nvr.sim.ptz_state(0).unwrap().moving.is_none(), "channel 0 untouched");

    // Presets set on the device are listed; going to one moves there.
    let client =
        dvrip::client::Client::connect(dvrip::client::ClientConfig::new(a.to_string(), "admin", PW)).await.unwrap();
    client.ptz(dvrip::messages::PtzCommand::SetPreset, 2, 5, 7, 0).await.unwrap();
    let list = c2.request(&IvtRequest::GetPtzPresetList { channel: 1 }).await.unwrap();
    assert_eq!(list, serde_json::json!([{"name": "Preset7", "token": "7"}]));
    let tours = c2.request(&IvtRequest::GetPtzPresetTourList { channel: 1 }).await.unwrap();
    assert_eq!(tours[0]["token"], "1");
    c2.event(&IvtEvent::CtrlPtz { channel: 1, op: "up".into(), speed: 50 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c2.event(&IvtEvent::GotoPtzPreset { channel: 1, token: "7".into() }).await;
    assert!(nvr.sim.ptz_state(2).unwrap().moving.is_none(), "at the preset");

    // Motion and trip-wire settings land in Detect.MotionDetect.[2].
    c2.request(&IvtRequest::AlarmRectIntrusionDetectConfig(detect(1, Some([50, 0, 100, 0, 50, 50, 100, 50]))))
        .await
        .unwrap();
    let md = client.config_get("Detect.MotionDetect.[2]").await.unwrap();
    assert_eq!((md["Enable"].as_bool(), md["Level"].as_u64()), (Some(true), Some(6)), "{md}");
    assert_eq!(md["Region"][0], "0x003FF800");
    assert_eq!(md["EventHandler"]["TimeSection"][0][0], "1 08:00:00-18:00:00");
    assert_eq!(md["EventHandler"]["EventLatch"], 5);

    // Net config from NetWork.NetCommon / NetDNS.
    let net = c0.request(&IvtRequest::GetNetConfig { channel: 0 }).await.unwrap();
    assert_eq!((net[0]["ip"].as_str(), net[0]["dns1"].as_str()), (Some("127.0.0.1"), Some("8.8.8.8")), "{net}");

    // SyncTime sets the device clock unless within offset.
    let target = chrono::Local::now().naive_local() + chrono::Duration::hours(3);
    c0.event(&IvtEvent::SyncTime { datetime: target, offset: 5 }).await;
    assert!((nvr.sim.clock() - target).num_seconds().abs() <= 2, "clock {}", nvr.sim.clock());

    // A snapshot is the device's JPEG.
    let jpeg = c2.snapshot().await.unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]));

    // Alarms: device channel 2's motion → bit 3 and an alarm event on c2 only.
    let mut a2 = c2.alarm_events().unwrap();
    let mut a0 = c0.alarm_events().unwrap();
    nvr.sim.raise_alarm(2, "VideoMotion", true).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), a2.recv()).await.unwrap().unwrap();
    assert_eq!((ev.bit, ev.on), (3, true), "{ev:?}");
    assert_eq!(c2.alarm_bits(), 1 << 3);
    assert_eq!(c0.alarm_bits(), 0);
    nvr.sim.raise_alarm(2, "VideoMotion", false).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), a2.recv()).await.unwrap().unwrap();
    assert!(!ev.on);
    assert!(a0.try_recv().is_err(), "channel 0 saw no alarm");
    // Video loss takes the channel offline while it lasts.
    nvr.sim.raise_alarm(2, "VideoLoss", true).await;
    wait_state(c2.as_ref(), ChannelState::Offline, 5).await;
    assert_eq!(c0.state(), ChannelState::Online);
    nvr.sim.raise_alarm(2, "VideoLoss", false).await;
    wait_state(c2.as_ref(), ChannelState::Online, 5).await;

    // A recording of the extra stream, judged by ffprobe.
    records_and_plays(c2.as_ref(), 640).await;

    // Reboot: offline, then back by itself, still one login.
    c0.request(&IvtRequest::RebootChannel { channel: 0 }).await.unwrap();
    assert_eq!(c0.state(), ChannelState::Offline);
    assert_eq!(c2.state(), ChannelState::Offline, "the whole device rebooted");
    wait_state(c0.as_ref(), ChannelState::Online, 20).await;
    wait_state(c2.as_ref(), ChannelState::Online, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dvrip_device_that_refuses_says_so() {
    let (cam, other) = (dvrip_sim(1).await, dvrip_sim(1).await);
    let (a, b) = (other.addr, cam.addr);
    let chans = edge_channels(&[&format!("dvrip://admin:wrong@{a}/0"), &format!("dvrip://admin:{PW}@{b}/5")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(chans[0].state(), ChannelState::Offline);
    let e = chans[0].request(&IvtRequest::GetNetConfig { channel: 0 }).await.unwrap_err();
    assert!(e.msg.contains("is offline") && e.msg.contains("Ret 203"), "{e:?}");
    // Channel 5 of a one-channel camera: the device refuses, and says how.
    wait_state(chans[1].as_ref(), ChannelState::Online, 10).await;
    let e = chans[1].request(&IvtRequest::AlarmMoveDetectConfig(detect(1, None))).await.unwrap_err();
    assert!(e.msg.contains("DVRIP device") && e.msg.contains("Detect.MotionDetect.[5]"), "{e:?}");
    assert!(e.msg.contains("Ret "), "names the device's code: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dvrip_device_that_goes_away_comes_back_by_itself() {
    let cam = dvrip_sim(1).await;
    let a = cam.addr;
    let chans = edge_channels(&[&format!("dvrip://admin:{PW}@{a}/0")]);
    wait_state(chans[0].as_ref(), ChannelState::Online, 10).await;
    // The device disappears (listener and sessions gone) …
    cam.server.close_all();
    cam.sim.reboot();
    wait_state(chans[0].as_ref(), ChannelState::Offline, 5).await;
    // … and returns: no action needed.
    wait_state(chans[0].as_ref(), ChannelState::Online, 30).await;
    assert!(chans[0].snapshot().await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cvip_unit_streams_records_moves_and_alarms() {
    let unit = cvip_sim().await;
    let a = unit.addr;
    let chans = edge_channels(&[&format!("cvip://{a}/1"), &format!("cvip://{a}/2?stream=extra")]);
    for c in &chans {
        wait_state(c.as_ref(), ChannelState::Online, 10).await;
    }
    let (c1, c2) = (&chans[0], &chans[1]);

    // PTZ right then stop: the unit's pan moved.
    c1.event(&IvtEvent::CtrlPtz { channel: 0, op: "right".into(), speed: 100 }).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    c1.event(&IvtEvent::CtrlPtz { channel: 0, op: "stop".into(), speed: 0 }).await;
    let p = unit.unit.ptz_position();
    assert!(p.pan > 5.0, "{p:?}");

    // Motion settings: read back through the protocol.
    c1.request(&IvtRequest::AlarmMoveDetectConfig(DetectConfig { start: 0, end: 86400, ..detect(0, None) }))
        .await
        .unwrap();
    let (client, _) = cvip::client::Client::connect(&a.to_string()).await.unwrap();
    let md = client.get_properties("cviMotionDetection.1", &["motiondetectionSensitivity"]).await.unwrap();
    assert_eq!(md.int("motiondetectionSensitivity"), Some(100));
    // What CVIP cannot do is an error naming the unit, not a success.
    let e = c1.request(&IvtRequest::AlarmMoveDetectConfig(detect(0, None))).await.unwrap_err();
    assert!(e.msg.contains("CVIP unit") && e.msg.contains("arming schedule"), "{e:?}");
    let e = c1.request(&IvtRequest::RebootChannel { channel: 0 }).await.unwrap_err();
    assert!(e.msg.contains("no reboot"), "{e:?}");
    let net = c1.request(&IvtRequest::GetNetConfig { channel: 0 }).await.unwrap();
    assert_eq!(net[0]["ip"], "192.168.1.10");

    // Events: motion on input 2 → bit 3 on channel 1 only.
    let mut ev2 = c2.alarm_events().unwrap();
    unit.unit.raise(0x04, 2, true);
    let ev = tokio::time::timeout(Duration::from_secs(5), ev2.recv()).await.unwrap().unwrap();
    assert_eq!((ev.bit, ev.on), (3, true));
    assert_eq!((c2.alarm_bits(), c1.alarm_bits()), (1 << 3, 0));
    unit.unit.raise(0x08, 2, true);
    wait_state(c2.as_ref(), ChannelState::Offline, 5).await;
    unit.unit.raise(0x08, 2, false);
    wait_state(c2.as_ref(), ChannelState::Online, 5).await;

    // The stream: RTP over TCP, depacketized and recorded (the sub-stream is 640x360).
    records_and_plays(c2.as_ref(), 640).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarm_center_takes_pushes_and_an_alarm_told_twice_counts_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let center = format!("127.0.0.1:{port}");
    let cfg = ivr_sim::dvrip::SimConfig {
        password: PW.into(),
        channels: 2,
        device_type: "NVR".into(),
        alarm_center: Some(center.clone()),
        ..Default::default()
    };
    let nvr = ivr_sim::dvrip::start(cfg, "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let toml = format!(
        "[cloud]\nurl = \"ws://127.0.0.1:9/ivc\"\nlogin_code = \"t\"\nlogin_passwd = \"t\"\n[devices]\nalarm_center = \"{center}\"\n[[channels]]\nchannel = 0\nsource = \"dvrip://admin:{PW}@{}/1\"\n",
        nvr.addr
    );
    let chans = ivr_edge::channels(&EdgeConfig::parse(&toml).unwrap(), &ivr_rpc::net::Dialer::default()).unwrap();
    let ch = &chans[0];
    wait_state(ch.as_ref(), ChannelState::Online, 10).await;
    let mut rx = ch.alarm_events().unwrap();
    // A push only the alarm center sees (the device never raised it).
    let msg = dvrip::messages::AlarmCenterMessage {
        address: dvrip::json::format_hex_ip(std::net::Ipv4Addr::LOCALHOST),
        channel: 1,
        description: String::new(),
        event: "HumanDetect".into(),
        serial_id: String::new(),
        start_time: "2026-11-30 10:00:00".into(),
        status: "Start".into(),
        kind: "Alarm".into(),
    };
    dvrip::alarm_center::push(&center, &msg).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!((ev.bit, ev.on), (4, true), "{ev:?}");
    assert_eq!(ch.alarm_bits(), 1 << 4);
    // Motion: pushed to the guarded login and to the center; one event.
    nvr.sim.raise_alarm(1, "VideoMotion", true).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!((ev.bit, ev.on), (3, true));
    let again = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await;
    assert!(again.is_err(), "the same alarm twice: {again:?}");
    // A second edge cannot take the same alarm-center address: said at start.
    let e = ivr_edge::channels(&EdgeConfig::parse(&toml).unwrap(), &ivr_rpc::net::Dialer::default()).err().unwrap();
    assert!(e.to_string().contains(&format!("[devices] alarm_center {center}")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_pre_record_keeps_a_ring_for_the_next_one() {
    let cam = dvrip_sim(1).await;
    let ivr_edge::source::Source::Dvrip(src) =
        ivr_edge::source::Source::parse(&format!("dvrip://admin:{PW}@{}/0?stream=extra", cam.addr)).unwrap()
    else {
        panic!()
    };
    let dev = ivr_edge::dvrip::DvripDevice::start(&src);
    let ch = ivr_edge::dvrip::DvripChannel::new(0, &src, dev, ivr_rpc::net::Dialer::default());
    wait_state(&ch, ChannelState::Online, 10).await;
    let (base, store) = common::server().await;
    let mut r = record(0, &format!("{base}/cbk"), "prerecord-session-000001", Quality::Sd);
    r.prerecord_seconds = 3;
    ch.request(&IvtRequest::StartCloudRecord(r.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ch.request(&IvtRequest::StopCloudRecord { session_id: r.session_id.clone(), channel: 0 }).await.unwrap();
    // The channel keeps its last 3 s (and not more) while another may come.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = ch.live().prerecord_bytes();
    // 3-4 s of the 640x360 sub-stream, not everything since the first call.
    assert!(kept > 0 && ch.live().open_feeds() == 1, "a pre-record ring is kept ({kept} bytes)");
    store.lock().unwrap().stored.clear();
    let called = chrono::Utc::now().timestamp_millis();
    r.session_id = "prerecord-session-000002".into();
    ch.request(&IvtRequest::StartCloudRecord(r.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ch.request(&IvtRequest::StopCloudRecord { session_id: r.session_id.clone(), channel: 0 }).await.unwrap();
    let mut first = None;
    for _ in 0..100 {
        first = store.lock().unwrap().stored.iter().find(|(d, _)| d["seq"] == 0).map(|(d, _)| d.clone());
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("the first segment");
    let start_ms = first["start_ts"].as_i64().unwrap() * 1000;
    assert!(called - start_ms >= 2500, "the recording begins {} ms before the call: {first}", called - start_ms);
}
