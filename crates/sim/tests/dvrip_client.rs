//! The DVRIP client against the simulator, over real sockets on loopback:
//! every command of the catalogue, the error paths, and the session rules.

use chrono::Duration as Span;
use dvrip::client::{Client, ClientConfig, Error, FileQuery, PlaybackTarget, SerialPort, SocketMode, UpgradeProgress};
use dvrip::media::{AudioCodec, FrameKind, VideoCodec};
use dvrip::messages::{PtzCommand, StreamType};
use ivr_sim::clips::ClipCodec;
use ivr_sim::dvrip::{start, Running, SimConfig};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn sim(cfg: SimConfig) -> Running {
    start(cfg, "127.0.0.1:0".parse().unwrap(), Some("127.0.0.1:0".parse().unwrap())).await.unwrap()
}

fn cfg() -> SimConfig {
    SimConfig { password: "pw".into(), channels: 2, device_type: "NVR".into(), ..SimConfig::default() }
}

fn client(r: &Running, user: &str, pass: &str) -> Client {
    let mut c = ClientConfig::new(r.addr.to_string(), user, pass);
    c.timeout = Duration::from_secs(5);
    Client::new(c)
}

fn ret_of(e: &Error) -> Option<i64> {
    match e {
        Error::Ret { code, .. } | Error::Login { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reports_the_device_and_refuses_bad_credentials() {
    let r = sim(SimConfig { lock_after: 3, ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let info = c.login_info().await.unwrap();
    assert_eq!((info.channels, info.device_type.as_str(), info.alive_interval), (2, "NVR", 20));
    assert_ne!(info.session, 0);

    let e = client(&r, "admin", "wrong").login_info().await.unwrap_err();
    assert_eq!(ret_of(&e), Some(203), "{e}");
    assert!(e.to_string().contains("password is incorrect"), "{e}");
    let e = client(&r, "nobody", "pw").login_info().await.unwrap_err();
    assert_eq!(ret_of(&e), Some(204), "{e}");
    // Two more failures lock admin out: then even the right password fails.
    for _ in 0..2 {
        let _ = client(&r, "admin", "bad").login_info().await;
    }
    let e = client(&r, "admin", "pw").login_info().await.unwrap_err();
    assert_eq!(ret_of(&e), Some(205), "{e}");
    // The session opened before the lock still works.
    assert!(c.system_info().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn information_and_capabilities() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let sys = c.system_info().await.unwrap();
    assert_eq!(sys["VideoInChannel"], 2);
    assert_eq!(sys["SerialNo"], "a166379674a3b447");
    let storage = c.storage_info().await.unwrap();
    assert_eq!(storage[0]["Partition"][0]["IsCurrent"], true);
    let work = c.work_state().await.unwrap();
    assert_eq!(work["ChannelState"].as_array().unwrap().len(), 2);
    assert_eq!(c.oem_info().await.unwrap()["Name"], "General");
    assert_eq!(c.system_function().await.unwrap()["CommFunction"]["CommRS485"], true);
    assert!(c.encode_capability().await.unwrap()["EncodeInfo"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_get_set_defaults_and_errors() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    assert_eq!(c.config_get("General.General").await.unwrap()["MachineName"], "LocalHost");
    c.config_set("General.General", json!({"MachineName": "Gate"})).await.unwrap();
    let g = c.config_get("General").await.unwrap();
    assert_eq!(g["General"]["MachineName"], "Gate");
    assert_eq!(g["General"]["FontSize"], 24, "a sparse set merges");
    assert_eq!(c.config_default("General.General").await.unwrap()["MachineName"], "LocalHost");
    c.config_set("Camera.Param.[1]", json!({"DncThr": 40})).await.unwrap();
    assert_eq!(c.config_get("Camera.Param.[1]").await.unwrap()["DncThr"], 40);
    assert_eq!(c.config_get("Camera.Param.[0]").await.unwrap()["DncThr"], 30);

    let e = c.config_get("No.Such").await.unwrap_err();
    assert_eq!(ret_of(&e), Some(607));
    assert!(e.to_string().contains("configuration does not exist"), "{e}");
    let e = c.config_set("General.General", json!({"FontSize": "big"})).await.unwrap_err();
    assert_eq!(ret_of(&e), Some(608));
    // Channel titles.
    assert_eq!(c.channel_titles().await.unwrap(), ["CAM01", "CAM02"]);
    c.set_channel_titles(&["Door".into(), "Yard".into()]).await.unwrap();
    assert_eq!(c.channel_titles().await.unwrap(), ["Door", "Yard"]);
    let e = c.set_channel_titles(&["a".into(), "b".into(), "c".into()]).await.unwrap_err();
    assert_eq!(ret_of(&e), Some(208));
    c.set_title_bitmap(64, 16, &[0xAA; 128]).await.unwrap();
    assert!(c.set_title_bitmap(64, 16, &[0xAA; 100]).await.is_err(), "wrong size caught before sending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_is_set_and_runs() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let t = dvrip::json::parse_time("2021-06-01 12:00:00").unwrap();
    c.set_time(&t).await.unwrap();
    let got = c.time().await.unwrap().unwrap();
    assert!(got >= t && got < t + Span::seconds(3), "{got}");
    let t2 = dvrip::json::parse_time("2022-02-02 02:02:02").unwrap();
    c.set_time_no_rtc(&t2).await.unwrap();
    let got = c.time().await.unwrap().unwrap();
    assert!(got >= t2 && got < t2 + Span::seconds(3), "{got}");
    // Live I-frames carry the device clock.
    let mut s = c.monitor(0, StreamType::Extra, SocketMode::Single).await.unwrap();
    let f = s.next_frame().await.unwrap();
    let dt = f.device_time.unwrap();
    assert!(dt >= t2 && dt < t2 + Span::seconds(5), "{dt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptz_moves_presets_and_tours() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    c.ptz(PtzCommand::Right, 1, 8, 65535, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.ptz_stop(PtzCommand::Right, 1).await.unwrap();
    let p = r.sim.ptz_state(1).unwrap();
    assert!(p.pan > 0 && p.moving.is_none(), "{p:?}");
    let pan = p.pan;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.sim.ptz_state(1).unwrap().pan, pan, "stopped means stopped");
    c.ptz(PtzCommand::SetPreset, 1, 5, 7, 0).await.unwrap();
    c.ptz(PtzCommand::Up, 1, 8, 65535, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.ptz_stop(PtzCommand::Up, 1).await.unwrap();
    assert!(r.sim.ptz_state(1).unwrap().tilt > 0);
    c.ptz(PtzCommand::GotoPreset, 1, 5, 7, 0).await.unwrap();
    let p = r.sim.ptz_state(1).unwrap();
    assert_eq!((p.pan, p.tilt), (pan, 0));
    c.ptz(PtzCommand::ZoomTile, 1, 5, 65535, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.ptz_stop(PtzCommand::ZoomTile, 1).await.unwrap();
    assert!(r.sim.ptz_state(1).unwrap().zoom > 0);
    c.ptz(PtzCommand::ClearPreset, 1, 5, 7, 0).await.unwrap();
    assert_eq!(ret_of(&c.ptz(PtzCommand::GotoPreset, 1, 5, 7, 0).await.unwrap_err()), Some(208));
    c.ptz(PtzCommand::StartTour, 0, 5, 65535, 1).await.unwrap();
    assert!(r.sim.ptz_state(0).unwrap().touring);
    c.ptz(PtzCommand::StopTour, 0, 5, 65535, 1).await.unwrap();
    assert!(!r.sim.ptz_state(0).unwrap().touring);
    assert_eq!(ret_of(&c.ptz(PtzCommand::Left, 9, 5, 65535, 0).await.unwrap_err()), Some(208), "no channel 9");
}

async fn frames(s: &mut dvrip::client::MediaStream, n: usize) -> Vec<dvrip::media::MediaFrame> {
    let mut v = Vec::new();
    while v.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), s.next_frame()).await {
            Ok(Some(f)) => v.push(f),
            _ => break,
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_main_and_extra_on_one_or_two_sockets() {
    let r = sim(SimConfig { codec: ClipCodec::H265, ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    for (stream, mode, w, h) in [
        (StreamType::Main, SocketMode::Single, 2592, 1944),
        (StreamType::Extra, SocketMode::Second, 640, 360),
        (StreamType::Main, SocketMode::Second, 2592, 1944),
    ] {
        let mut s = c.monitor(1, stream, mode).await.unwrap();
        let t0 = std::time::Instant::now();
        let got = frames(&mut s, 30).await;
        let took = t0.elapsed();
        assert_eq!(got.len(), 30, "{stream:?} {mode:?}");
        assert!(got[0].is_keyframe());
        for f in &got {
            assert_eq!(
                f.kind,
                FrameKind::Video { codec: VideoCodec::H265, keyframe: f.is_keyframe(), width: w, height: h, fps: 25 }
            );
            assert!(f.payload.starts_with(&[0, 0, 0, 1]) || f.payload.starts_with(&[0, 0, 1]));
        }
        // 30 frames at 25 fps take about 1.2 s: the stream is paced.
        assert!(took >= Duration::from_millis(900), "{took:?}");
        s.stop().await.unwrap();
    }
    // The control connection still works after streams stopped.
    assert!(c.time().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_frame_rate_and_audio_follow_the_encode_config() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    c.config_set("Simplify.Encode.[0].ExtraFormat", json!({"AudioEnable": true, "Video": {"FPS": 10}})).await.unwrap();
    let mut s = c.monitor(0, StreamType::Extra, SocketMode::Single).await.unwrap();
    let got = frames(&mut s, 20).await;
    let video: Vec<_> = got.iter().filter(|f| matches!(f.kind, FrameKind::Video { .. })).collect();
    let audio: Vec<_> = got.iter().filter(|f| matches!(f.kind, FrameKind::Audio { .. })).collect();
    assert!(matches!(video[0].kind, FrameKind::Video { fps: 10, .. }));
    assert_eq!(audio[0].kind, FrameKind::Audio { codec: AudioCodec::G711A, sample_rate: Some(8000) });
    assert_eq!(audio[0].payload.len(), 800, "100 ms of 8 kHz audio per frame at 10 fps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_search_pages_and_filters() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let now = c.time().await.unwrap().unwrap();
    let all = c.files(&FileQuery::new(0, now - Span::hours(25), now)).await.unwrap();
    let on_disk = r.sim.recordings().iter().filter(|x| x.channel == 0).count();
    assert!(on_disk > 128, "{on_disk}: enough for three pages");
    assert_eq!(all.len(), on_disk, "more than 64: paged");
    let mut names: Vec<_> = all.iter().map(|f| f.name.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), on_disk);
    assert!(all.windows(2).all(|w| w[0].begin_time() < w[1].begin_time()));
    let mut q = FileQuery::new(0, now - Span::hours(25), now);
    q.event = "M".into();
    let motion = c.files(&q).await.unwrap();
    assert!(!motion.is_empty() && motion.iter().all(|f| f.name.contains("[M]")));
    let q = FileQuery::new(1, now + Span::hours(1), now + Span::hours(2));
    assert!(c.files(&q).await.unwrap().is_empty(), "119 (no files) is an empty list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_by_file_and_by_time_range() {
    let r = sim(SimConfig {
        record_length: Span::seconds(4),
        record_every: Span::seconds(10),
        record_span: Span::minutes(5),
        ..cfg()
    })
    .await;
    let c = client(&r, "admin", "pw");
    let recs = r.sim.recordings();
    let rec = recs.iter().find(|x| x.channel == 1).unwrap().clone();
    let entry = rec.entry();
    for mode in [SocketMode::Single, SocketMode::Second] {
        let mut s = c.download(PlaybackTarget::File(entry.clone()), mode).await.unwrap();
        let mut bytes = 0u64;
        while let Some(ch) =
            tokio::time::timeout(Duration::from_secs(10), s.next_chunk()).await.expect("download stalled")
        {
            bytes += ch.len() as u64;
        }
        assert_eq!(bytes, rec.bytes, "{mode:?}: the whole file");
        assert_eq!(entry.length_kib().unwrap() as u64, bytes.div_ceil(1024));
    }
    // Frames of a time range: two recordings' worth, starting on a keyframe.
    let a = recs.iter().filter(|x| x.channel == 0).nth(2).unwrap();
    let b = recs.iter().filter(|x| x.channel == 0).nth(3).unwrap();
    let target = PlaybackTarget::Time { channel: 0, begin: a.begin, end: b.end, stream: StreamType::Main };
    let mut s = c.download(target, SocketMode::Single).await.unwrap();
    let mut n = 0;
    let mut first = None;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), s.next_frame()).await.expect("download stalled") {
        first.get_or_insert(f.is_keyframe());
        n += 1;
    }
    assert_eq!(n, 2 * 4 * 25);
    assert_eq!(first, Some(true));
    let none = PlaybackTarget::Time {
        channel: 0,
        begin: a.begin - Span::days(10),
        end: a.begin - Span::days(9),
        stream: StreamType::Main,
    };
    assert_eq!(ret_of(&c.download(none, SocketMode::Second).await.err().unwrap()), Some(119));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_is_paced_and_pausable() {
    let r = sim(SimConfig {
        record_length: Span::seconds(4),
        record_every: Span::seconds(10),
        record_span: Span::minutes(5),
        ..cfg()
    })
    .await;
    let c = client(&r, "admin", "pw");
    let entry = r.sim.recordings()[0].entry();
    let mut s = c.playback(PlaybackTarget::File(entry.clone()), SocketMode::Second).await.unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(frames(&mut s, 25).await.len(), 25);
    assert!(t0.elapsed() >= Duration::from_millis(800), "{:?}", t0.elapsed());
    let sid = c.session_id().await.unwrap();
    let body = |a: &str| json!({"Name": "OPPlayBack", "SessionID": dvrip::json::format_session(sid), "OPPlayBack": {"Action": a, "Parameter": {"FileName": entry.name}}});
    c.raw(dvrip::ids::PLAY_REQ, body("Pause")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused = tokio::time::timeout(Duration::from_millis(500), async {
        // Drain what was in flight, then nothing more comes.
        let mut n = 0;
        while tokio::time::timeout(Duration::from_millis(300), s.next_frame()).await.is_ok() {
            n += 1;
        }
        n
    })
    .await;
    assert!(paused.is_err() || paused.unwrap() <= 3, "paused playback keeps sending");
    c.raw(dvrip::ids::PLAY_REQ, body("Fast")).await.unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(frames(&mut s, 40).await.len(), 40);
    assert!(t0.elapsed() < Duration::from_millis(1500), "fast is faster: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talk_both_ways() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let mut t = c.talk(AudioCodec::G711A).await.unwrap();
    t.send(&ivr_sim::clips::TONE_ALAW[..3200]).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(3), t.recv()).await.unwrap().unwrap();
    assert_eq!(f.kind, FrameKind::Audio { codec: AudioCodec::G711A, sample_rate: Some(8000) });
    assert_eq!(f.payload.len(), 320);
    t.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.sim.talk_bytes(), 3200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_page_by_position() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    for i in 0..80 {
        c.config_set("General.General", json!({"LocalNo": i})).await.unwrap();
    }
    let now = c.time().await.unwrap().unwrap();
    let logs = c.logs(&(now - Span::hours(1)), &(now + Span::minutes(1)), "LogAll").await.unwrap();
    assert!(logs.len() >= 82, "{} entries (start, login, 80 saves)", logs.len());
    assert!(logs.windows(2).all(|w| w[0].position < w[1].position));
    let saves = c.logs(&(now - Span::hours(1)), &(now + Span::minutes(1)), "SaveConfig").await.unwrap();
    assert_eq!(saves.len(), 80);
    let text = c.export_log().await.unwrap();
    assert!(String::from_utf8_lossy(&text).lines().count() >= 82);
    c.clear_log().await.unwrap();
    let logs = c.logs(&(now - Span::hours(1)), &(now + Span::minutes(1)), "LogAll").await.unwrap();
    assert_eq!(logs.len(), 1, "only the ClearLog record remains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let auth = c.authority_list().await.unwrap();
    assert!(auth.contains(&"Account".to_string()));
    assert_eq!(c.groups().await.unwrap().len(), 2);
    c.add_group("ops", "operators", &["Monitor_01".into(), "PTZControl".into()]).await.unwrap();
    assert_eq!(ret_of(&c.add_group("ops", "", &[]).await.unwrap_err()), Some(114));
    c.add_user("bob", "b0b", "ops", "night shift", &["Monitor_01".into()]).await.unwrap();
    assert_eq!(ret_of(&c.add_user("bob", "x", "ops", "", &[]).await.unwrap_err()), Some(112));
    assert_eq!(ret_of(&c.add_user("eve", "x", "ops", "", &["Account".into()]).await.unwrap_err()), Some(213));
    assert_eq!(ret_of(&c.add_user("eve", "x", "nope", "", &[]).await.unwrap_err()), Some(115));
    assert_eq!(ret_of(&c.delete_group("ops").await.unwrap_err()), Some(212), "group in use");

    // bob logs in, can watch but not administer.
    let bob = client(&r, "bob", "b0b");
    assert!(bob.time().await.is_ok());
    assert_eq!(ret_of(&bob.delete_user("default").await.unwrap_err()), Some(107));
    assert_eq!(ret_of(&bob.ptz(PtzCommand::Up, 0, 5, 65535, 0).await.unwrap_err()), Some(107), "no PTZControl");
    c.modify_user("bob", json!({"AuthorityList": ["Monitor_01", "PTZControl"], "Group": "ops", "Name": "bob"}))
        .await
        .unwrap();
    bob.ptz(PtzCommand::Up, 0, 5, 65535, 0).await.unwrap();

    c.change_password("bob", "b0b", "n3w").await.unwrap();
    assert_eq!(ret_of(&c.change_password("bob", "b0b", "x").await.unwrap_err()), Some(203));
    assert_eq!(ret_of(&client(&r, "bob", "b0b").login_info().await.unwrap_err()), Some(203));
    assert!(client(&r, "bob", "n3w").login_info().await.is_ok());

    c.modify_group("ops", json!({"AuthorityList": ["Monitor_01", "PTZControl"], "Memo": "ops", "Name": "operators"}))
        .await
        .unwrap();
    let users = c.users().await.unwrap();
    assert_eq!(users.iter().find(|u| u["Name"] == "bob").unwrap()["Group"], "operators");
    assert_eq!(ret_of(&c.delete_user("admin").await.unwrap_err()), Some(216), "reserved");
    c.delete_user("bob").await.unwrap();
    assert_eq!(ret_of(&c.delete_user("bob").await.unwrap_err()), Some(113));
    c.delete_group("operators").await.unwrap();
    assert_eq!(c.users().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_reach_guarded_sessions_and_the_alarm_center() {
    let center = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let center_addr = center.local_addr().unwrap();
    let (tx, mut pushes) = tokio::sync::mpsc::channel(8);
    tokio::spawn(dvrip::alarm_center::serve(center, tx));
    let r = sim(SimConfig { alarm_center: Some(center_addr.to_string()), ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let other = client(&r, "admin", "pw");
    let mut alarms = c.alarms();
    let mut other_alarms = other.alarms();
    c.guard().await.unwrap();
    other.time().await.unwrap();
    c.net_alarm(true).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(3), alarms.recv()).await.unwrap().unwrap();
    assert_eq!((a.event.as_str(), a.status.as_str(), a.channel), ("NetAlarm", "Start", 0));
    let p = tokio::time::timeout(Duration::from_secs(3), pushes.recv()).await.unwrap().unwrap();
    assert_eq!((p.message.event.as_str(), p.message.status.as_str()), ("NetAlarm", "Start"));
    assert_eq!(p.message.ip(), Some(std::net::Ipv4Addr::LOCALHOST));
    assert!(other_alarms.try_recv().is_err(), "unguarded sessions get no alarms");
    c.unguard().await.unwrap();
    c.net_alarm(false).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), alarms.recv()).await.is_err(), "unguarded");
    // The alarm center is configuration: switching it off stops pushes.
    while pushes.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    while pushes.try_recv().is_ok() {}
    c.config_set("NetWork.AlarmServer", json!({"Alarm": false})).await.unwrap();
    c.net_alarm(true).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), pushes.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_motion_alarms_show_in_work_state() {
    let r = sim(SimConfig { alarm_every: Some(Duration::from_millis(300)), ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let mut alarms = c.alarms();
    c.guard().await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(3), alarms.recv()).await.unwrap().unwrap();
    assert_eq!((a.event.as_str(), a.status.as_str()), ("VideoMotion", "Start"));
    assert_ne!(c.work_state().await.unwrap()["AlarmState"]["VideoMotion"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_reports_progress_then_the_device_reboots_and_we_log_in_again() {
    let r = sim(SimConfig { reboot_time: Duration::from_millis(500), ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let before = c.session_id().await.unwrap();
    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut seen = Vec::new();
    c.upgrade(&image, |p| seen.push(p)).await.unwrap();
    assert!(seen.contains(&UpgradeProgress::Sent(200_000, 200_000)));
    assert!(seen.contains(&UpgradeProgress::Writing(100)));
    assert_eq!(seen.last(), Some(&UpgradeProgress::Done));
    // The device reboots: the session drops; the next call logs in anew.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let sys = c.system_info().await.unwrap();
    assert_ne!(sys["UpdataTime"], "", "the upgrade is recorded");
    assert_ne!(c.session_id().await.unwrap(), before);
    // An upgrade without its start is refused.
    let e = c.raw(dvrip::ids::UPGRADE_DATA, json!({})).await.unwrap();
    assert_eq!(e["Ret"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_drops_the_session_and_calls_reconnect() {
    let r = sim(SimConfig { reboot_time: Duration::from_millis(400), ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    c.config_set("General.General", json!({"MachineName": "Kept"})).await.unwrap();
    c.reboot().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.system_info().await.is_err(), "away while rebooting");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.config_get("General.General").await.unwrap()["MachineName"], "Kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_the_configuration() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    c.config_set("General.General", json!({"MachineName": "Exported"})).await.unwrap();
    let archive = c.export_config().await.unwrap();
    assert!(archive.starts_with(b"PK\x03\x04"), "a zip archive");
    assert!(archive.len() < 64 * 1024);
    c.config_set("General.General", json!({"MachineName": "Changed"})).await.unwrap();
    c.import_config(&archive).await.unwrap();
    assert_eq!(c.config_get("General.General.MachineName").await.unwrap(), "Exported");
    let e = c.import_config(b"not a zip at all").await.unwrap_err();
    assert_eq!(ret_of(&e), Some(608));
    assert_eq!(
        c.config_get("General.General.MachineName").await.unwrap(),
        "Exported",
        "a refused import changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_framed_and_raw() {
    for raw in [false, true] {
        let r = sim(SimConfig { snapshot_raw: raw, ..cfg() }).await;
        let c = client(&r, "admin", "pw");
        let jpeg = c.snapshot(1).await.unwrap();
        assert_eq!(&jpeg[..], ivr_sim::clips::SNAPSHOT_JPEG, "raw={raw}");
        assert_eq!(ret_of(&c.snapshot(5).await.unwrap_err()), Some(208));
    }
}

/// Found by the edge (an NVR's channels sending previews at once): snapshot
/// replies are routed by message id, so concurrent snapshots on one
/// connection used to steal each other's route ("the connection closed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_snapshots_on_one_connection_all_arrive() {
    let r = sim(SimConfig { channels: 4, ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let shots: Vec<_> = (0..4u32)
        .map(|ch| {
            tokio::spawn({
                let c = c.clone();
                async move { c.snapshot(ch).await }
            })
        })
        .collect();
    for s in shots {
        assert_eq!(&s.await.unwrap().unwrap()[..], ivr_sim::clips::SNAPSHOT_JPEG);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_serial_ports_and_raw_calls() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    c.key("Menu", true).await.unwrap();
    c.key("Menu", false).await.unwrap();
    assert_eq!(r.sim.keys(), [("KeyDown".to_string(), "Menu".to_string()), ("KeyUp".into(), "Menu".into())]);
    c.serial_write(SerialPort::Rs485, b"\xff\x01\x00\x08").await.unwrap();
    assert_eq!(c.serial_read(SerialPort::Rs485).await.unwrap(), b"\xff\x01\x00\x08");
    assert!(c.serial_read(SerialPort::Rs485).await.unwrap().is_empty());
    let mut pipe = c.serial_open(SerialPort::Rs232, 9600).await.unwrap();
    pipe.send(b"hello").await.unwrap();
    assert_eq!(&tokio::time::timeout(Duration::from_secs(2), pipe.recv()).await.unwrap().unwrap()[..], b"hello");
    pipe.close().await.unwrap();
    let v = c.raw(dvrip::ids::OPTIMEQUERY_REQ, json!({"Name": "OPTimeQuery"})).await.unwrap();
    assert_eq!(v["Ret"], 100);
    let v = c.raw(1700, json!({"Name": "FutureThing"})).await.unwrap();
    assert_eq!(v["Ret"], 136, "unknown commands: not supported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_device_and_sets_its_ip() {
    let r = sim(cfg()).await;
    let target = r.discovery_addr.unwrap();
    let found = dvrip::discovery::search(target, Duration::from_millis(500)).await.unwrap();
    assert_eq!(found.len(), 1);
    let d = &found[0].1;
    assert_eq!(d.host_ip, Some(std::net::Ipv4Addr::LOCALHOST));
    assert_eq!(d.tcp_port, r.addr.port());
    assert_eq!(d.serial, "a166379674a3b447");
    let ip = std::net::Ipv4Addr::new(10, 1, 2, 3);
    let mask = std::net::Ipv4Addr::new(255, 255, 0, 0);
    let body = dvrip::discovery::ip_set_request(&d.mac, ip, mask, ip, "admin", "wrong");
    let v = dvrip::discovery::set_ip(target, &body, Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(v["Ret"], 106);
    let body = dvrip::discovery::ip_set_request(&d.mac, ip, mask, ip, "admin", "pw");
    let v = dvrip::discovery::set_ip(target, &body, Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(v["Ret"], 100);
    let c = client(&r, "admin", "pw");
    let nc = c.config_get("NetWork.NetCommon").await.unwrap();
    assert_eq!(dvrip::json::parse_hex_ip(nc["Submask"].as_str().unwrap()), Some(mask));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_the_session_and_silence_ends_it() {
    let r = sim(SimConfig { alive_interval: 1, ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let id = c.session_id().await.unwrap();
    // Idle for longer than three intervals: our keep-alive keeps it.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(c.time().await.is_ok());
    assert_eq!(c.session_id().await.unwrap(), id, "no reconnect was needed");
    // A raw client that logs in and then says nothing is dropped.
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let body = dvrip::json::encode_body(
        &json!({"EncryptType": "MD5", "LoginType": "DVRIP-Web", "PassWord": dvrip::sofia_hash("pw"), "UserName": "admin"}),
    );
    let mut pkt = bytes::BytesMut::new();
    dvrip::Header::new(dvrip::ids::LOGIN_REQ, 0, 0, body.len()).encode(&mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 20);
    let t0 = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            if s.read(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "silent session not dropped");
    assert!(t0.elapsed() >= Duration::from_millis(2500), "dropped too early: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_share_one_connection() {
    let r = sim(cfg()).await;
    let c = client(&r, "admin", "pw");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.config_get("General.General").await.map(|v| v["FontSize"] == 24)
            } else {
                c.system_info().await.map(|v| v["VideoInChannel"] == 2)
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unauthenticated_requests_get_codes_not_crashes() {
    let r = sim(cfg()).await;
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n\xff\x07\x00\x00garbage").await.unwrap();
    let body = dvrip::json::encode_body(&json!({"Name": "SystemInfo", "SessionID": "0x00000000"}));
    let mut pkt = bytes::BytesMut::new();
    dvrip::Header::new(dvrip::ids::SYSTEM_INFO_REQ, 0, 5, body.len()).encode(&mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).await.unwrap();
    let mut codec = dvrip::DvripCodec::default();
    let mut buf = bytes::BytesMut::new();
    let reply = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let mut tmp = [0u8; 1024];
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&tmp[..n]);
            if let Some(p) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf).unwrap() {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(reply.header.msg_id, dvrip::ids::SYSTEM_INFO_RESP);
    assert_eq!(reply.header.seq, 5);
    assert_eq!(dvrip::json::ret(&dvrip::json::parse_body(&reply.payload).unwrap()), Some(105));
    // And the device still serves everyone else.
    assert!(client(&r, "admin", "pw").system_info().await.is_ok());
}

#[tokio::test]
async fn aes_negotiating_firmware_is_named() {
    // A device that answers login with DataUseAES: true.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let body = dvrip::json::encode_body(
            &serde_json::from_str(include_str!("../../dvrip/testdata/login_reply_aes_firmware.json")).unwrap(),
        );
        let mut pkt = bytes::BytesMut::new();
        dvrip::Header::new(dvrip::ids::LOGIN_RESP, 0x12, 0, body.len()).encode(&mut pkt);
        pkt.extend_from_slice(&body);
        s.write_all(&pkt).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = Client::connect(ClientConfig::new(addr.to_string(), "admin", "")).await.err().unwrap();
    assert!(e.to_string().contains("negotiates encryption"), "{e}");
}

/// A client pointed at something that is not a DVRIP device (a web server
/// here) says so, instead of a hex dump and "the connection closed".
#[tokio::test]
async fn a_peer_that_is_not_dvrip_is_named() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 512];
        let _ = s.read(&mut b).await;
        s.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>bad</html>").await.unwrap();
    });
    let e = Client::connect(ClientConfig::new(addr.to_string(), "admin", "")).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{addr} answered with bytes that are not DVRIP (it looks like HTTP) (wrong port? DVRIP is usually 34567)"
        )
    );
}

/// An NVR client logs in once and claims one second connection per stream
/// (the edge does: a 16-channel NVR is one login): each stream goes to the
/// connection that claimed it, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_many_streams_each_on_its_own_second_socket() {
    let r = sim(SimConfig { channels: 4, ..cfg() }).await;
    let c = client(&r, "admin", "pw");
    let mut main0 = c.monitor(0, StreamType::Main, SocketMode::Second).await.unwrap();
    let mut sub3 = c.monitor(3, StreamType::Extra, SocketMode::Second).await.unwrap();
    let mut main2 = c.monitor(2, StreamType::Main, SocketMode::Second).await.unwrap();
    let width = |f: &dvrip::media::MediaFrame| match f.kind {
        FrameKind::Video { width, .. } => Some(width),
        _ => None,
    };
    for _ in 0..30 {
        let (a, b, d) = tokio::join!(main0.next_frame(), sub3.next_frame(), main2.next_frame());
        let (a, b, d) = (a.unwrap(), b.unwrap(), d.unwrap());
        for (f, w) in [(&a, 2592), (&b, 640), (&d, 2592)] {
            if let Some(got) = width(f) {
                assert_eq!(got, w, "each stream on its own connection");
            }
        }
    }
    assert_eq!(r.server.sessions().len(), 1, "one login");
    // Stopping one leaves the others running.
    sub3.stop().await.unwrap();
    for _ in 0..10 {
        assert!(main0.next_frame().await.is_some() && main2.next_frame().await.is_some());
    }
}
