//! The cvip client against the simulated device, NVR and master server,
//! over real sockets on loopback.

use cvip::api::{self, EntityType, PlayState, ProfileType};
use cvip::{Client, Error};
use cvip::{Struct, Value};
use ivr_sim::clips::{clip, ClipCodec};
use ivr_sim::cvip::{media, start, CvipConfig, Role, Running};
use std::time::Duration;

async fn unit(role: Role) -> Running {
    let cfg = CvipConfig { role, channels: 2, history_hours: 2, session_limit: 2, ..CvipConfig::default() };
    start(cfg, "127.0.0.1:0".parse().unwrap(), Some("127.0.0.1:0".parse().unwrap())).await.unwrap()
}

async fn client(r: &Running) -> (Client, tokio::sync::mpsc::Receiver<cvip::client::Pushed>) {
    Client::connect(&r.addr.to_string()).await.unwrap()
}

fn is_fail(e: &Error) -> bool {
    matches!(e, Error::Ack { code, .. } if *code == cvip::ack::FAIL)
}

#[tokio::test]
async fn discovery_over_udp_and_tcp() {
    let r = unit(Role::Device).await;
    let found = cvip::ping::discover_udp(&[r.common.unwrap(), r.addr], Duration::from_millis(500)).await.unwrap();
    assert_eq!(found.len(), 1, "one unit answering on two ports is listed once");
    assert_eq!(found[0].response.port, r.addr.port());
    assert!(found[0].response.rebooted, "first ping after boot says rebooted");
    let again = cvip::ping::ping_tcp(r.common.unwrap(), Duration::from_secs(2)).await.unwrap();
    assert!(!again.rebooted, "not rebooted since the last request");
    assert_eq!(again.guid, *b"ivr-sim-cvip-001");
    // The CVIP port itself also answers a ping over TCP.
    assert_eq!(cvip::ping::ping_tcp(r.addr, Duration::from_secs(2)).await.unwrap().product, 1);
}

#[tokio::test]
async fn services_properties_and_validation() {
    let r = unit(Role::Device).await;
    let (c, _) = client(&r).await;
    let services = c.list_services().await.unwrap();
    for s in [
        "cvip",
        "cviUnit",
        "cviNetwork",
        "cviNetwork.1",
        "cviNetwork.2",
        "cviVideo.01",
        "cviVideo.02.2",
        "cviMotionDetection.2",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} in {services:?}");
    }
    assert_eq!(c.list_events(None).await.unwrap()[1].0, "cviVideo");
    let ev = c.list_events(Some("cviVideo")).await.unwrap();
    assert!(ev.iter().any(|(i, _)| i == "VIDEO_LOST"), "{ev:?}");
    let d = c.describe("cviStream").await.unwrap();
    assert_eq!((d.property_support, d.function_support), (0, 1));
    let f = c.list_functions("cviStream").await.unwrap();
    assert_eq!(f[0].method_name, "create");
    let p = c.list_parameters("cviStream", "create").await.unwrap();
    assert_eq!(p.get("methodCall").unwrap().as_array().unwrap().len(), 7);

    let props = c.list_properties("cviVideo.01.1").await.unwrap();
    let rate = props.iter().find(|p| p.str("id").as_deref() == Some("videoEncoderFrameRate")).unwrap();
    assert_eq!(rate.str("range").as_deref(), Some("1,30,1"));
    c.set_properties(
        "cviVideo.01.1",
        Struct::new().with("videoEncoderFrameRate", 15).with("videoEncoderRateControl", "VBR"),
    )
    .await
    .unwrap();
    let v = c.get_properties("cviVideo.01.1", &["videoEncoderFrameRate", "videoEncoderRateControl"]).await.unwrap();
    assert_eq!(v.get("videoEncoderFrameRate"), Some(&Value::UInt(15)));
    // All or nothing: one bad value refuses the whole set.
    let e = c
        .set_properties(
            "cviVideo.01.1",
            Struct::new().with("videoEncoderFrameRate", 20).with("videoEncoderRateControl", "ABR"),
        )
        .await
        .unwrap_err();
    assert!(is_fail(&e) && e.to_string().contains("ABR"), "{e}");
    assert_eq!(
        c.get_properties("cviVideo.01.1", &["videoEncoderFrameRate"]).await.unwrap().int("videoEncoderFrameRate"),
        Some(15)
    );
    let e = c.set_properties("cviVideo.01.1", Struct::new().with("videoEncoderMaxBitRate", 100)).await.unwrap_err();
    assert!(e.to_string().contains("multiple of 64"), "{e}");
    let e = c.set_properties("cviUnit", Struct::new().with("unitUpTime", 1)).await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let e = c.get_properties("cviUnit", &["nope"]).await.unwrap_err();
    assert!(is_fail(&e), "{e}");
    let e = c.call("cviNothing.describe", vec![]).await.unwrap_err();
    assert!(matches!(e, Error::Fault { code, .. } if code == cvip::ack::INVALID as i64), "{e}");
}

#[tokio::test]
async fn pipelined_calls_on_one_connection() {
    let r = unit(Role::Device).await;
    let (c, _) = client(&r).await;
    let calls = (0..200).map(|i| {
        let c = c.clone();
        async move {
            let name = format!("Camera {i}");
            let svc = if i % 2 == 0 { "cviVideo.01" } else { "cviVideo.02" };
            c.call1(&format!("{svc}.describe"), vec![]).await.map(|v| (v, name))
        }
    });
    let all = futures_util::future::join_all(calls).await;
    for (i, r) in all.into_iter().enumerate() {
        let (v, _) = r.unwrap();
        let want = if i % 2 == 0 { "cviVideo.01" } else { "cviVideo.02" };
        assert_eq!(v.as_struct().unwrap().str("id").as_deref(), Some(want), "answer {i} matched by transaction");
    }
}

#[tokio::test]
async fn stream_sends_rtp_of_the_fixture() {
    let r = unit(Role::Device).await;
    let (c, _) = client(&r).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dest = sock.local_addr().unwrap();
    let s = api::StreamSession {
        guid: "test".into(),
        major: 1,
        minor: 2,
        dest_ip: dest.ip().to_string(),
        dest_port: dest.port() as u32,
        dest_transport: "udp".into(),
        ..Default::default()
    };
    let created = c.stream_create(&s).await.unwrap();
    assert!(created.stream_id > 0);
    assert_eq!(created.media_type, api::MediaType::H264.code());
    // 25 frames (1 s) of RTP: one marker per access unit, H.264 payload.
    let mut markers = 0;
    let mut payload = 0usize;
    let mut buf = vec![0u8; 2048];
    while markers < 25 {
        let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(buf[0] >> 6, 2, "RTP version 2");
        assert_eq!(buf[1] & 0x7f, 96);
        markers += (buf[1] >> 7) as usize;
        payload += n - 12;
    }
    assert!(payload > 5000, "{payload}");
    let list = c.stream_list("").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].dest_port, dest.port() as u32);
    // The limit (2 here) answers busy.
    c.stream_create(&s).await.unwrap();
    let e = c.stream_create(&s).await.unwrap_err();
    assert!(matches!(e, Error::Ack { code, .. } if code == cvip::ack::BUSY), "{e}");
    c.stream_delete("test", created.stream_id).await.unwrap();
    assert!(is_fail(&c.stream_delete("test", created.stream_id).await.unwrap_err()));
    let bad = api::StreamSession { major: 9, ..s.clone() };
    assert!(is_fail(&c.stream_create(&bad).await.unwrap_err()));

    // Raw Annex B over TCP: the bytes are the fixture's.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = api::StreamSession {
        dest_port: l.local_addr().unwrap().port() as u32,
        dest_transport: "raw".into(),
        ..s.clone()
    };
    let c2 = c.clone();
    let list = c2.stream_list("").await.unwrap();
    c.stream_delete("test", list[0].stream_id).await.unwrap();
    c.stream_create(&raw).await.unwrap();
    let (mut sock, _) = l.accept().await.unwrap();
    let want = media::recording_bytes(clip(ClipCodec::H264, false), 3);
    let mut got = vec![0u8; want.len()];
    tokio::io::AsyncReadExt::read_exact(&mut sock, &mut got).await.unwrap();
    assert_eq!(got, want, "the first three frames, byte for byte");
}

#[tokio::test]
async fn ptz_events_analytics_firmware() {
    let r = unit(Role::Device).await;
    let (c, mut events) = client(&r).await;
    c.ptz_set(&api::PtzSetup { ptz_id: 1, protocol: 2, user_priority: 1 }).await.unwrap();
    let cmd = |ty: api::PtzCmdType, d: i32| api::PtzCommand {
        guid: "g".into(),
        ptz_id: 1,
        phy_addr: 1,
        user_priority: 1,
        cmd_type: ty.code(),
        cmd_data: d,
    };
    // Speed 8 is 40° a second: it moved at least the 300 ms between the
    // two answers, at most the time from the first ask to the last answer
    // (however slow the machine is in between).
    let t = std::time::Instant::now();
    c.ptz_cmd(&cmd(api::PtzCmdType::Tilt, 8)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.ptz_cmd(&cmd(api::PtzCmdType::Stop, 0)).await.unwrap();
    let most = 40.0 * t.elapsed().as_secs_f64();
    let p = r.unit.ptz_position();
    assert!(p.tilt >= 11.9 && p.tilt <= most + 0.1, "{p:?}, at most {most:.1}°");
    c.ptz_cmd(&cmd(api::PtzCmdType::SetPreset, 3)).await.unwrap();
    c.ptz_cmd(&cmd(api::PtzCmdType::Pan, 16)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.ptz_cmd(&cmd(api::PtzCmdType::GotoPreset, 3)).await.unwrap();
    assert_eq!(r.unit.ptz_position(), p);
    assert!(is_fail(&c.ptz_cmd(&cmd(api::PtzCmdType::GotoPreset, 4)).await.unwrap_err()));
    assert!(is_fail(&c.ptz_cmd(&cmd(api::PtzCmdType::Pan, 17)).await.unwrap_err()));
    let other_port = api::PtzCommand { ptz_id: 2, ..cmd(api::PtzCmdType::Pan, 1) };
    assert!(is_fail(&c.ptz_cmd(&other_port).await.unwrap_err()));

    // Events: subscribed types and channels only.
    c.event_subscribe(event_mask("motion"), 2).await.unwrap();
    assert_eq!(r.unit.raise(cvip::server::event_type::MOTION, 1, true), 0, "channel 1 not subscribed");
    assert_eq!(r.unit.raise(cvip::server::event_type::VIDEO_LOSS, 2, true), 0, "video loss not subscribed");
    assert_eq!(r.unit.raise(cvip::server::event_type::MOTION, 2, true), 1);
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert_eq!(ev.method, "cviEvent.notify");
    let n = api::Notify::from_struct(ev.params[0].as_struct().unwrap());
    assert_eq!((n.event_type, n.id, n.info), (4, 2, 1));
    c.event_unsubscribe(event_mask("motion"), 0).await.unwrap();
    assert_eq!(r.unit.raise(cvip::server::event_type::MOTION, 2, true), 0);
    assert!(is_fail(&c.event_unsubscribe(event_mask("motion"), 0).await.unwrap_err()));

    // Analytics: the seed's <AnalyticsData> over TCP.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = api::AnalyticsSession {
        guid: "g".into(),
        major: 1,
        minor: 1,
        dest_ip: "127.0.0.1".into(),
        dest_port: l.local_addr().unwrap().port() as u32,
        ..Default::default()
    };
    c.analytics_create(&a).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    let mut fr = tokio_util::codec::FramedRead::new(s, cvip::PacketCodec::default());
    let p = tokio::time::timeout(Duration::from_secs(3), futures_util::StreamExt::next(&mut fr))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let d = cvip::parse_analytics(&p.body).unwrap();
    assert!(d.repairs.is_empty());
    assert_eq!(d.value.source_guid, "6976722D-7369-6D2D-6376-69702D303031");
    assert_eq!(c.analytics_list("g").await.unwrap().len(), 1);
    c.analytics_delete(&a).await.unwrap();

    // Firmware: image over the data channel, flash, version, reboot.
    let image: Vec<u8> = b"version=9.9.9\n".iter().copied().chain((0..500_000u32).map(|i| i as u8)).collect();
    // Consume the boot's "rebooted" flag first.
    cvip::ping::ping_tcp(r.addr, Duration::from_secs(2)).await.unwrap();
    assert!(!cvip::ping::ping_tcp(r.addr, Duration::from_secs(2)).await.unwrap().rebooted);
    c.firmware_start("fw-9.9.9.bin", "tok").await.unwrap();
    assert_eq!(c.firmware_progress().await.unwrap().state, "FWUPDWAITING");
    let s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    // A channel with a wrong id is refused.
    let bad = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    assert!(cvip::data::send(bad, "wrong", &b"x"[..], |_| {}).await.is_ok());
    let sent = cvip::data::send(s, "tok", &image[..], |_| {}).await.unwrap();
    assert_eq!(sent, image.len() as u64);
    let mut last = None;
    for _ in 0..100 {
        let p = c.firmware_progress().await.unwrap();
        if p.state == "FWUPDDONE" {
            last = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = last.expect("flashed");
    assert_eq!(last.total as usize, image.len());
    assert_eq!(r.unit.firmware_version(), "9.9.9");
    assert_eq!(r.unit.last_firmware_image(), Some((image.len() as u64, ivr_sim::cvip::fnv64(&image))), "byte-exact");
    assert!(
        cvip::ping::ping_tcp(r.addr, Duration::from_secs(2)).await.unwrap().rebooted,
        "the update rebooted the unit"
    );
}

fn event_mask(s: &str) -> u32 {
    api::parse_event_mask(s).unwrap()
}

#[tokio::test]
async fn nvr_records_plays_back_queries_and_exports() {
    let r = unit(Role::Nvr).await;
    let (c, _) = client(&r).await;
    let history = r.unit.recordings().len();
    assert_eq!(history, 2 * 2 * 60);
    let rec = api::RecordSession { guid: "g".into(), major: 2, minor: 1, ..Default::default() };
    c.record_create(&rec).await.unwrap();
    assert!(is_fail(&c.record_create(&rec).await.unwrap_err()), "already recording");
    c.record_update(&api::RecordSession { schedule_profile_id: 1, ..rec.clone() }).await.unwrap();
    assert!(is_fail(
        &c.record_update(&api::RecordSession { schedule_profile_id: 7, ..rec.clone() }).await.unwrap_err()
    ));
    assert_eq!(c.record_list("g").await.unwrap()[0].schedule_profile_id, 1);
    c.record_update(&api::RecordSession { schedule_profile_id: 0, ..rec.clone() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.record_delete(&rec).await.unwrap();
    assert_eq!(r.unit.recordings().len(), history + 1, "the session left a recording");

    // A schedule that is not active now records nothing.
    let now = chrono::Utc::now().naive_utc();
    let off = if ivr_sim::cvip::in_schedule(1, now) { 2 } else { 1 };
    assert!(!ivr_sim::cvip::in_schedule(off, now));
    let sched = api::RecordSession { schedule_profile_id: off, ..rec.clone() };
    c.record_create(&sched).await.unwrap();
    let listed = c.call1("cviRecord.list", vec![]).await.unwrap();
    let row = listed.as_array().unwrap()[0].as_struct().unwrap().clone();
    assert_eq!(row.get("Recording"), Some(&Value::Bool(false)), "{row:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let done = c.call_ack("cviRecord.delete", vec![sched.to_struct().into()]).await.unwrap();
    assert_eq!(done.as_struct().unwrap().int("Frames"), Some(0));
    assert_eq!(r.unit.recordings().len(), history + 1, "nothing recorded outside the schedule");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(); // a Monday
    let t = |h, m| day.and_hms_opt(h, m, 0).unwrap();
    assert_eq!(ivr_sim::cvip::scheduled_secs(1, t(7, 0), t(9, 0)), 3600);
    assert_eq!(ivr_sim::cvip::scheduled_secs(2, t(5, 0), t(21, 0)), 7200);

    // Query: pages of 16, by channel and event.
    let q = api::MediaQuery { guid: "g".into(), major: 1, ..Default::default() };
    let p0 = c.media_query(&q).await.unwrap();
    assert_eq!(p0.items.len(), 16);
    assert!(!p0.is_last);
    let mut all = 0;
    let mut page = 0;
    loop {
        let p = c.media_query(&api::MediaQuery { page, ..q.clone() }).await.unwrap();
        all += p.items.len();
        if p.is_last {
            break;
        }
        page += 1;
    }
    assert_eq!(all, 120);
    let motion = c.media_query(&api::MediaQuery { event_type: 4, ..q.clone() }).await.unwrap();
    assert_eq!(motion.items.len(), 16);
    let first = &p0.items[0];
    let e = c.media_query(&api::MediaQuery { start_date: "garbage".into(), ..q.clone() }).await.unwrap_err();
    assert!(matches!(e, Error::Fault { .. }), "{e}");

    // Export: byte-exact over the data channel.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    c.media_export(&api::Export {
        guid: "g".into(),
        clip_id: first.clip_id,
        server_ip: "127.0.0.1".into(),
        server_port: port as u32,
        authentication_id: "exp".into(),
    })
    .await
    .unwrap();
    let (s, _) = l.accept().await.unwrap();
    let mut fr = tokio_util::codec::FramedRead::new(s, cvip::PacketCodec::default());
    assert_eq!(cvip::data::accept(&mut fr).await.unwrap(), "exp");
    let mut got = Vec::new();
    cvip::data::receive(&mut fr, &mut got, |_| {}).await.unwrap();
    assert_eq!(got.len() as u32, first.size);
    assert_eq!(got, media::recording_bytes(clip(ClipCodec::H264, false), 1500));
    assert!(is_fail(&c.media_export(&api::Export { clip_id: 999_999, ..Default::default() }).await.unwrap_err()));

    // Playback over one clip and a half.
    let start = ivr_sim::cvip::parse_time(&first.clip_time).unwrap();
    let end = start + chrono::Duration::seconds(90);
    let pb = api::PlaybackSession {
        guid: "g".into(),
        major: 1,
        minor: 1,
        start_time: ivr_sim::cvip::fmt_compact(start),
        end_time: ivr_sim::cvip::fmt_compact(end),
        ..Default::default()
    };
    let created = c.playback_create(&pb).await.unwrap();
    let id = created.playback_id;
    assert_eq!(c.playback_length("g", id).await.unwrap(), 90 * 25);
    c.playback_seek("g", id, 100).await.unwrap();
    // At 2× of 25 fps, 50 frames a second: at least the 400 ms slept, at
    // most the time from asking to play to the status's answer.
    let t = std::time::Instant::now();
    c.playback_setstate("g", id, PlayState::Play, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let st = c.playback_status("g", id).await.unwrap();
    let most = 100 + (50.0 * t.elapsed().as_secs_f64()).ceil() as u32;
    assert_eq!((st.state, st.speed), (1, 2));
    assert!(st.position >= 119 && st.position <= most + 1, "{st:?}, at most {most}");
    c.playback_setstate("g", id, PlayState::Stop, 1).await.unwrap();
    assert_eq!(c.playback_status("g", id).await.unwrap().position, 0);
    c.playback_setstate("g", id, PlayState::StepForward, 1).await.unwrap();
    assert_eq!(c.playback_status("g", id).await.unwrap().position, 1);
    assert!(is_fail(&c.playback_seek("g", id, 99_999).await.unwrap_err()));
    assert!(is_fail(&c.playback_setstate("g", id, PlayState::Other(5), 1).await.unwrap_err()));
    assert_eq!(c.playback_list("g").await.unwrap().len(), 1);
    let spans = c
        .playback_query_events(
            "g",
            1,
            1,
            &ivr_sim::cvip::fmt_compact(start),
            &ivr_sim::cvip::fmt_compact(start + chrono::Duration::minutes(35)),
            0x08,
        )
        .await
        .unwrap();
    assert!(!spans.is_empty() && spans.iter().all(|s| s.event_type == 8), "{spans:?}");
    c.playback_delete("g", id).await.unwrap();
    assert!(is_fail(&c.playback_status("g", id).await.unwrap_err()));
}

#[tokio::test]
async fn master_server_model() {
    let r = unit(Role::Master).await;
    let (c, _) = client(&r).await;
    assert!(is_fail(&c.login("g", "admin", "wrong", 1).await.err().unwrap()));
    let m = c.login("g", "admin", "admin", 1).await.unwrap();
    // Every call needs a live AppGUID.
    let ghost = api::Master { app_guid: "nope".into(), ..m.clone() };
    assert!(is_fail(&ghost.list_users().await.unwrap_err()));

    let g = m.add_group(&api::UserGroup { name: "Guards".into(), privilege: 3, ..Default::default() }).await.unwrap();
    assert!(is_fail(&m.add_group(&api::UserGroup { name: "guards".into(), ..Default::default() }).await.unwrap_err()));
    let u = m
        .add_user(&api::User {
            name: "eve".into(),
            password: "pw".into(),
            privilege: 1,
            group_id: g,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(is_fail(&m.delete_group(g).await.unwrap_err()), "a group with users stays");
    // eve logs in, lacks Housekeeping: reads yes, writes no.
    let eve = c.login("g", "eve", "pw", 2).await.unwrap();
    assert_eq!(eve.list_users().await.unwrap().len(), 2);
    assert!(is_fail(&eve.delete_user(u).await.unwrap_err()));
    m.update_user(&api::User {
        user_id: u,
        name: "eve".into(),
        password: "pw2".into(),
        privilege: 0x11,
        group_id: g,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(c.login("g", "eve", "pw", 2).await.is_err());
    c.login("g", "eve", "pw2", 2).await.unwrap();

    // Entities: 25 cameras over two pages; version bumps.
    let v0 = m.entity_query(EntityType::Camera).await.unwrap().version;
    let cam_group = m
        .entity_add_group(&api::EntityGroup { entity_type: 1, name: "Lobby".into(), ..Default::default() })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        let e = api::Entity {
            entity_type: 1,
            group_id: cam_group,
            name: format!("cam{i}"),
            properties: Struct::new().with("PhyAddr", i).with("Capability", 1),
            ..Default::default()
        };
        ids.push(m.entity_add(&e).await.unwrap());
    }
    let p0 = m.entity_list(EntityType::Camera, 0).await.unwrap();
    assert_eq!((p0.items.len(), p0.is_last), (20, false));
    let all = m.entity_list_all(EntityType::Camera).await.unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(all[3].properties.int("PhyAddr"), Some(3));
    assert!(m.entity_query(EntityType::Camera).await.unwrap().version > v0);
    assert!(is_fail(&m.entity_delete_group(EntityType::Camera, cam_group).await.unwrap_err()));
    m.mount(u, ids[0], EntityType::Camera).await.unwrap();
    assert!(is_fail(&m.mount(u, ids[0], EntityType::Camera).await.unwrap_err()));
    m.unmount(u, ids[0], EntityType::Camera).await.unwrap();

    // An image over 1 MiB in two packets.
    let img: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut e = api::Entity { entity_type: 6, name: "map".into(), ..Default::default() };
    e.properties.push("ImageTypeID", 4);
    e.properties.push("ImageData", Value::Base64(img[..800_000].to_vec()));
    let id = m.entity_add(&e).await.unwrap();
    let mut more = Struct::new().with("EntityTypeID", EntityType::Image).with("EntityID", id).with("IsLastPage", false);
    more.push("ImageData", Value::Base64(img[800_000..].to_vec()));
    m.call("cviEntity.add", more).await.unwrap();
    let back = m.entity_list_all(EntityType::Image).await.unwrap();
    assert_eq!(back[0].properties.get("ImageData"), Some(&Value::Base64(img.clone())));
    let mut too_big = e.clone();
    too_big.properties.set("ImageData", Value::Base64(vec![0; 1024 * 1024 + 1]));
    assert!(is_fail(&m.entity_add(&too_big).await.unwrap_err()));

    // Profiles, device services, applications.
    let prof = m
        .profile_add(ProfileType::VideoEncoder, Struct::new().with("QMin", 10).with("QMax", 40).with("frameRate", 25))
        .await
        .unwrap();
    assert!(is_fail(
        &m.profile_add(ProfileType::VideoEncoder, Struct::new().with("baudRate", 9600)).await.unwrap_err()
    ));
    let dev = m
        .entity_add(&api::Entity {
            entity_type: 3,
            name: "enc".into(),
            properties: Struct::new().with("IPAddress", "10.0.0.5").with("Port", 7110),
            ..Default::default()
        })
        .await
        .unwrap();
    m.entity_update_service(dev, "0x03.1", prof).await.unwrap();
    assert_eq!(m.entity_services(dev).await.unwrap()[0].int("ProfileID"), Some(prof as i64));
    assert!(is_fail(&m.profile_delete(ProfileType::VideoEncoder, prof).await.unwrap_err()), "bound profiles stay");
    m.application_add(
        EntityType::Camera,
        ids[1],
        api::ApplicationType::VideoStreaming,
        Struct::new().with("VideoSourceEntityIP", "10.0.0.5"),
    )
    .await
    .unwrap();
    assert_eq!(m.applications(EntityType::Camera, ids[1]).await.unwrap().len(), 1);
    m.entity_delete(EntityType::Camera, ids[1]).await.unwrap();
    assert!(is_fail(&m.applications(EntityType::Camera, ids[1]).await.unwrap_err()));

    m.logout().await.unwrap();
    assert!(is_fail(&m.list_groups().await.unwrap_err()));
}

#[tokio::test]
async fn serial_pipe_carries_pelco_d_to_the_ptz() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = unit(Role::Device).await;
    let (c, _) = client(&r).await;
    let port =
        api::SerialPort { guid: "g".into(), id: 1, baud_rate: 9600, data_bits: 8, stop_bits: 1, ..Default::default() };
    let bad = api::SerialPort { baud_rate: 1234, ..port.clone() };
    assert!(is_fail(&c.serial_create(&bad).await.unwrap_err()));
    let made = c.serial_create(&port).await.unwrap();
    assert_eq!(made.connection_type, "TCP");
    assert!(made.connection_port > 0);
    assert!(is_fail(&c.serial_create(&port).await.unwrap_err()), "one pipe per port");
    assert_eq!(c.serial_list("g").await.unwrap().len(), 1);

    let mut line = tokio::net::TcpStream::connect(("127.0.0.1", made.connection_port as u16)).await.unwrap();
    let frame = |cmd2: u8, d1: u8, d2: u8| {
        let mut f = [0xFF, 0x01, 0x00, cmd2, d1, d2, 0];
        f[6] = f[1..6].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        f
    };
    // A frame with a bad checksum is ignored, then pan right at full speed.
    let mut broken = frame(0x02, 0x3f, 0);
    broken[6] ^= 1;
    line.write_all(&broken).await.unwrap();
    line.write_all(&frame(0x02, 0x3f, 0)).await.unwrap();
    let mut ack = [0u8; 4];
    line.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0xFF, 0x01, 0x00, 0x01], "one general response, for the good frame");
    tokio::time::sleep(Duration::from_millis(250)).await;
    line.write_all(&frame(0, 0, 0)).await.unwrap();
    line.read_exact(&mut ack).await.unwrap();
    let p = r.unit.ptz_position();
    assert!(p.pan > 10.0 && p.pan < 40.0, "{p:?}");
    c.serial_delete("g", 1).await.unwrap();
    assert!(c.serial_list("g").await.unwrap().is_empty());
}

#[tokio::test]
async fn playback_sends_video_while_playing() {
    let r = unit(Role::Nvr).await;
    let (c, _) = client(&r).await;
    let first =
        c.media_query(&api::MediaQuery { guid: "g".into(), major: 1, ..Default::default() }).await.unwrap().items[0]
            .clone();
    let start = ivr_sim::cvip::parse_time(&first.clip_time).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dest = sock.local_addr().unwrap();
    let pb = api::PlaybackSession {
        guid: "g".into(),
        major: 1,
        start_time: ivr_sim::cvip::fmt_compact(start),
        end_time: ivr_sim::cvip::fmt_compact(start + chrono::Duration::seconds(60)),
        dest_ip: dest.ip().to_string(),
        dest_port: dest.port() as u32,
        dest_transport: "udp".into(),
        ..Default::default()
    };
    let id = c.playback_create(&pb).await.unwrap().playback_id;
    let mut buf = [0u8; 2048];
    // Paused: nothing is sent.
    assert!(tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await.is_err());
    c.playback_setstate("g", id, PlayState::Play, 4).await.unwrap();
    let mut markers = 0;
    let t = std::time::Instant::now();
    while markers < 50 {
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await.unwrap().unwrap();
        assert!(n > 12);
        markers += (buf[1] >> 7) as usize;
    }
    // 50 frames at 4× of 25 fps: about half a second; at 1× two.
    assert!(t.elapsed() < Duration::from_millis(1900), "{:?}", t.elapsed());
    c.playback_setstate("g", id, PlayState::Pause, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while tokio::time::timeout(Duration::from_millis(50), sock.recv(&mut buf)).await.is_ok() {}
    assert!(tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await.is_err(), "paused again");
    c.playback_delete("g", id).await.unwrap();
}

#[tokio::test]
async fn displays_event_acks_and_the_remaining_master_calls() {
    // Device: display sessions and acknowledging a notified event.
    let r = unit(Role::Device).await;
    let (c, mut events) = client(&r).await;
    let d = api::DisplaySession {
        guid: "g".into(),
        major: 1,
        minor: 1,
        src_ip: "10.0.0.9".into(),
        src_port: 554,
        src_transport: "udp".into(),
        ..Default::default()
    };
    c.display_create(&d).await.unwrap();
    assert!(is_fail(&c.display_create(&d).await.unwrap_err()), "output busy");
    assert!(is_fail(&c.display_create(&api::DisplaySession { major: 9, ..d.clone() }).await.unwrap_err()));
    let bad_src = api::DisplaySession { src_ip: "not-an-ip".into(), minor: 2, ..d.clone() };
    assert!(matches!(c.display_create(&bad_src).await.unwrap_err(), Error::Fault { .. }));
    assert_eq!(c.display_list("g").await.unwrap(), vec![d.clone()]);
    c.display_delete(&d).await.unwrap();
    assert!(c.display_list("g").await.unwrap().is_empty());

    c.event_subscribe(event_mask("external"), 0).await.unwrap();
    assert_eq!(r.unit.raise(cvip::server::event_type::EXTERNAL, 1, true), 1);
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    let n = api::Notify::from_struct(ev.params[0].as_struct().unwrap());
    c.event_ack("app", &n.event_guid, "2026-11-21 10:00:00", "seen").await.unwrap();
    let again = c.event_ack("app", &n.event_guid, "2026-11-21 10:00:01", "seen").await.unwrap_err();
    assert!(matches!(again, Error::Ack { code, .. } if code == cvip::ack::event::FAIL), "{again}");
    let invalid = c.event_ack("", "", "", "").await.unwrap_err();
    assert!(matches!(invalid, Error::Ack { code, .. } if code == cvip::ack::event::INVALID), "{invalid}");

    // Master: the update/delete paths.
    let r = unit(Role::Master).await;
    let (c, _) = client(&r).await;
    let m = c.login("g", "admin", "admin", 1).await.unwrap();
    let g = m.add_group(&api::UserGroup { name: "Ops".into(), privilege: 1, ..Default::default() }).await.unwrap();
    m.update_group(&api::UserGroup {
        group_id: g,
        name: "Operators".into(),
        description: "day shift".into(),
        privilege: 3,
    })
    .await
    .unwrap();
    let groups = m.list_groups().await.unwrap();
    let ops = groups.iter().find(|x| x.group_id == g).unwrap();
    assert_eq!((ops.name.as_str(), ops.privilege), ("Operators", 3));
    m.delete_group(g).await.unwrap();
    assert!(is_fail(&m.delete_group(g).await.unwrap_err()));

    let eg = m
        .entity_add_group(&api::EntityGroup { entity_type: 2, name: "Wall".into(), ..Default::default() })
        .await
        .unwrap();
    m.entity_update_group(&api::EntityGroup {
        entity_type: 2,
        group_id: eg,
        name: "Video wall".into(),
        description: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(m.entity_groups(EntityType::Monitor).await.unwrap()[0].name, "Video wall");
    let mon = m
        .entity_add(&api::Entity { entity_type: 2, group_id: eg, name: "left".into(), ..Default::default() })
        .await
        .unwrap();
    let mut e = m.entity_list_all(EntityType::Monitor).await.unwrap().remove(0);
    e.name = "left screen".into();
    e.properties.set("Resolution", "1920x1080");
    m.entity_update(&e).await.unwrap();
    let back = m.entity_list_all(EntityType::Monitor).await.unwrap().remove(0);
    assert_eq!((back.name.as_str(), back.properties.str("Resolution").as_deref()), ("left screen", Some("1920x1080")));
    m.entity_delete(EntityType::Monitor, mon).await.unwrap();
    m.entity_delete_group(EntityType::Monitor, eg).await.unwrap();

    let p = m
        .profile_add(ProfileType::Schedule, Struct::new().with("dateValid", 1).with("timeBlock", "08:00-18:00"))
        .await
        .unwrap();
    m.profile_update(ProfileType::Schedule, p, Struct::new().with("timeBlock", "20:00-06:00")).await.unwrap();
    let listed = m.profiles(ProfileType::Schedule).await.unwrap();
    assert_eq!(listed[0].str("timeBlock").as_deref(), Some("20:00-06:00"));
    assert!(is_fail(&m.profile_update(ProfileType::Schedule, p, Struct::new().with("QMax", 3)).await.unwrap_err()));
    m.profile_delete(ProfileType::Schedule, p).await.unwrap();
    assert!(m.profiles(ProfileType::Schedule).await.unwrap().is_empty());

    let cam = m.entity_add(&api::Entity { entity_type: 1, name: "cam".into(), ..Default::default() }).await.unwrap();
    let app = api::ApplicationType::VideoRecording;
    m.application_add(EntityType::Camera, cam, app, Struct::new().with("VideoSinkEntityIP", "10.0.0.2")).await.unwrap();
    assert!(is_fail(&m.application_add(EntityType::Camera, cam, app, Struct::new()).await.unwrap_err()));
    m.application_update(EntityType::Camera, cam, app, Struct::new().with("VideoSinkEntityIP", "10.0.0.3"))
        .await
        .unwrap();
    assert_eq!(
        m.applications(EntityType::Camera, cam).await.unwrap()[0].str("VideoSinkEntityIP").as_deref(),
        Some("10.0.0.3")
    );
    m.application_delete(EntityType::Camera, cam, Some(app)).await.unwrap();
    assert!(is_fail(&m.application_delete(EntityType::Camera, cam, None).await.unwrap_err()));
    // Deleting a user ends their sessions.
    let u = m
        .add_user(&api::User { name: "tmp".into(), password: "x".into(), privilege: 0x10, ..Default::default() })
        .await
        .unwrap();
    let tmp = c.login("g", "tmp", "x", 1).await.unwrap();
    m.delete_user(u).await.unwrap();
    assert!(is_fail(&tmp.list_users().await.unwrap_err()));
}

/// Every method each role lists, called with no params, with fields of the
/// wrong types and extreme values, and with positional junk: every call
/// gets an answer (an ack or a fault) and the connection stays up — a
/// panic in a handler would take the connection down.
#[tokio::test]
async fn hostile_params_never_break_a_unit() {
    for role in [Role::Device, Role::Nvr, Role::Master] {
        let r = unit(role).await;
        let (c, _) = client(&r).await;
        let mut methods = Vec::new();
        for s in c.list_services().await.unwrap() {
            for f in c.list_functions(&s).await.unwrap() {
                methods.push(format!("{s}.{}", f.method_name));
            }
            for g in [
                "describe",
                "listProperties",
                "getProperties",
                "setProperties",
                "listFunctions",
                "listParameters",
                "listEvents",
            ] {
                methods.push(format!("{s}.{g}"));
            }
        }
        let junk = |v: Value| {
            let mut s = Struct::new();
            for k in [
                "GUID",
                "AppGUID",
                "ID",
                "StreamID",
                "PlaybackID",
                "major",
                "minor",
                "Major",
                "destIp",
                "destPort",
                "destTransport",
                "srcIp",
                "srcPort",
                "StartTime",
                "EndTime",
                "State",
                "Speed",
                "Position",
                "Type",
                "Id",
                "ClipID",
                "serverIP",
                "serverPort",
                "authenticationId",
                "EntityTypeID",
                "EntityID",
                "GroupID",
                "UserID",
                "ProfileTypeID",
                "ProfileID",
                "ApplicationTypeID",
                "ImageData",
                "Page",
                "UserName",
                "PassWord",
                "EventType",
                "CmdType",
                "CmdData",
                "PtzID",
                "ProtocolType",
                "BaudRate",
                "DataBits",
                "StopBits",
                "ServiceID",
                "imageFileId",
                "videoInputBrightness",
            ] {
                s.push(k, v.clone());
            }
            Value::Struct(s)
        };
        let shapes: Vec<Vec<Value>> = vec![
            vec![],
            vec![junk(Value::Str("'; DROP TABLE --\u{0}é".into()))],
            vec![junk(Value::Int(i32::MIN))],
            vec![junk(Value::Int(i32::MAX))],
            vec![junk(Value::UInt(u32::MAX))],
            vec![junk(Value::Double(f64::NAN))],
            vec![junk(Value::Array(vec![Value::Nil; 3]))],
            vec![junk(Value::Base64(vec![0xff; 64]))],
            vec![
                Value::Nil,
                Value::Int(-1),
                Value::Str("x".into()),
                Value::Array(vec![]),
                Value::Int(i32::MAX),
                Value::Int(i32::MIN),
            ],
        ];
        for m in &methods {
            if m.eq_ignore_ascii_case("cviUser.logout") {
                continue;
            }
            for p in &shapes {
                match c.call(m, p.clone()).await {
                    Ok(_) | Err(Error::Fault { .. }) => {}
                    Err(e) => panic!("{role:?} {m}: {e}"),
                }
            }
        }
        assert!(methods.len() > 20, "{role:?}: {}", methods.len());
        assert_eq!(c.system_describe().await.unwrap().version, "2.1.9", "{role:?}: still answering");
    }
}

/// Errors say where: the peer on every one, the method and transaction
/// where there is one; a refused connection says so once.
#[tokio::test]
async fn errors_name_the_peer_the_method_and_the_transaction() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = Client::connect(&addr.to_string()).await.err().unwrap();
    assert_eq!(e.to_string(), format!("cannot connect to {addr}: Connection refused (os error 111)"));
    assert!(std::error::Error::source(&e).is_none(), "the cause is in the message, not repeated as a source");

    // A peer that accepts and never answers: a timeout naming all three.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let (mut c, _) = Client::connect(&addr.to_string()).await.unwrap();
    c.set_timeout(Duration::from_millis(200));
    let e = c.call("system.describe", vec![]).await.unwrap_err();
    assert_eq!(e.to_string(), format!("{addr}: system.describe (transaction 1): no answer within 200ms"));
    hold.abort();
}
