//! The cloud over real HTTP and WebSocket, with the real edge agent as the
//! device: provisioning, auth failures, the device coming online with its
//! channels, RPC and events through the API, alarms and uploads, offline on
//! disconnect, a new login replacing the old, persistence across restarts.

mod common;

use common::{api, edge, http, raw_ivt, start_cloud, TOKEN};
use ivr_cloud::{serve, Cloud, CloudConfig, SqlStore};
use ivr_edge::{Backoff, ChannelBackend, Edge, EdgeConfig, SimChannel};
use ivr_testkit::wait_until;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_online_rpc_events_alarms_and_restart() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, server) = start_cloud(&dir).await;

    // The API needs the admin token.
    assert_eq!(http(addr, "GET", "/api/v1/devices", None, None).await.0, 401);
    assert_eq!(http(addr, "GET", "/api/v1/devices", Some("nope"), None).await.0, 401);
    // Provisioning.
    let (s, d) = api(
        addr,
        "POST",
        "/api/v1/devices",
        Some(json!({"login_code": "site-1", "login_passwd": "correct horse", "name": "Gate"})),
    )
    .await;
    assert_eq!((s, d["login_code"].as_str(), d["online"].as_bool()), (201, Some("site-1"), Some(false)));
    assert_eq!(
        api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "site-1", "login_passwd": "correct horse"})))
            .await
            .0,
        409
    );
    let (s, e) = api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "x", "login_passwd": "short"}))).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("login_passwd"));

    // A device with the wrong password is refused before the upgrade.
    let (bad, _) = edge(addr, "site-1", "wrong password");
    let bad_status = bad.status();
    let bad_task = tokio::spawn(bad.run());
    wait_until("the bad login is refused", async || {
        bad_status.borrow().last_error.as_deref().is_some_and(|e| e.contains("401"))
    })
    .await;
    bad_task.abort();

    // The real edge comes online with its channel.
    let (e1, ch) = edge(addr, "site-1", "correct horse");
    let e1_task = tokio::spawn(e1.run());
    wait_until("site-1 is online with channel 0", async || {
        let (_, d) = api(addr, "GET", "/api/v1/devices/site-1", None).await;
        d["online"] == true && d["channels"][0]["state"] == 1
    })
    .await;
    let (_, d) = api(addr, "GET", "/api/v1/devices/site-1", None).await;
    assert_eq!((d["hardware_model"].as_str(), d["name"].as_str()), (Some("ivr-edge"), Some("Gate")));

    // RPC through the API reaches the simulated channel.
    let (s, v) = api(addr, "POST", "/api/v1/devices/site-1/rpc/GetPTZPresetList", Some(json!({"channel": 0}))).await;
    assert_eq!((s, v[0]["token"].as_str()), (200, Some("1")));
    let publish =
        json!({"channel": 0, "quality": "hd", "url": "rtmp://127.0.0.1/live/a", "stream_id": "a", "max_bitrate": 0});
    assert_eq!(api(addr, "POST", "/api/v1/devices/site-1/rpc/RTMPPublish", Some(publish)).await.0, 200);
    wait_until("channel 0 reports live", async || {
        api(addr, "GET", "/api/v1/devices/site-1", None).await.1["channels"][0]["state"] == 2
    })
    .await;
    // The device's err is a 502 with its code; invalid params a 400; unknown methods 404.
    let (s, v) = api(
        addr,
        "POST",
        "/api/v1/devices/site-1/rpc/RTMPPublish",
        Some(json!({"channel": 0, "quality": "fhd", "url": "rtmp://x", "stream_id": "b", "max_bitrate": 1000})),
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (502, Some(11)));
    let (s, v) = api(addr, "POST", "/api/v1/devices/site-1/rpc/RebootChannel", Some(json!({}))).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("params.channel: required"));
    assert_eq!(api(addr, "POST", "/api/v1/devices/site-1/rpc/FormatDisk", None).await.0, 404);
    assert_eq!(api(addr, "POST", "/api/v1/devices/nobody/rpc/RebootChannel", Some(json!({"channel": 0}))).await.0, 404);
    // A channel the device does not have: 404, not sent.
    let (s, v) = api(addr, "POST", "/api/v1/devices/site-1/rpc/RebootChannel", Some(json!({"channel": 7}))).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no channel 7"), "{v}");
    let (s, _) =
        api(addr, "POST", "/api/v1/devices/site-1/events/CtrlPTZ", Some(json!({"channel": 7, "op": "up"}))).await;
    assert_eq!(s, 404);

    // Many calls in one request: one device's in the order given (each
    // Get sees the Set before it), every call with the status it would
    // have had alone.
    let set = |url: &str| {
        json!({"device": "site-1", "method": "SetRTMPPublishConfig",
               "params": [{"enable": true, "channel": 0, "quality": "ld", "url": url}]})
    };
    let get = json!({"device": "site-1", "method": "GetRTMPPublishConfig"});
    let calls = json!({"calls": [
        set("rtmp://127.0.0.1/live/first"), get, set("rtmp://127.0.0.1/live/second"), get,
        {"device": "site-1", "method": "FormatDisk"},
        {"device": "nobody", "method": "GetNetConfig", "params": {"channel": 0}},
        {"device": "site-1", "method": "RebootChannel", "params": {"channel": 7}},
        {"device": "site-1", "method": "RTMPPublish", "params": {"channel": 0, "quality": "fhd", "url": "rtmp://x", "stream_id": "b", "max_bitrate": 1000}},
    ]});
    let (s, v) = api(addr, "POST", "/api/v1/rpc", Some(calls)).await;
    assert_eq!((s, &v["ok"], &v["failed"]), (200, &json!(4), &json!(4)), "{v}");
    let r = &v["results"];
    assert_eq!(r[1]["answer"][0]["url"], "rtmp://127.0.0.1/live/first", "{v}");
    assert_eq!(r[3]["answer"][0]["url"], "rtmp://127.0.0.1/live/second", "{v}");
    assert_eq!(
        (&r[3]["device"], &r[3]["method"], &r[3]["status"]),
        (&json!("site-1"), &json!("GetRTMPPublishConfig"), &json!(200))
    );
    assert_eq!(r[4]["status"], 404, "an unknown method, not sent: {v}");
    assert_eq!(r[5]["status"], 404, "an unknown device: {v}");
    assert!(r[6]["error"].as_str().unwrap().contains("no channel 7"), "{v}");
    assert_eq!((&r[7]["status"], &r[7]["code"]), (&json!(502), &json!(11)), "the device's own error: {v}");
    // What is wrong with the request itself is said, and nothing is sent.
    let (s, v) = api(addr, "POST", "/api/v1/rpc", Some(json!({"calls": [get, {"device": "site-1"}]}))).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("calls[1]: missing field `method`"), "{v}");
    let (s, v) = api(addr, "POST", "/api/v1/rpc", Some(json!({"calls": []}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api(addr, "POST", "/api/v1/rpc", Some(json!({"calls": vec![get.clone(); 1001]}))).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("1 to 1000"), "{v}");
    let (s, _) = common::http(addr, "POST", "/api/v1/rpc", None, Some(br#"{"calls":[]}"#)).await;
    assert_eq!(s, 401);

    // Events through the API.
    let (s, _) = api(
        addr,
        "POST",
        "/api/v1/devices/site-1/events/CtrlPTZ",
        Some(json!({"channel": 0, "op": "up", "value": 30})),
    )
    .await;
    assert_eq!(s, 202);
    wait_until("the channel moves up", async || ch.ptz().moving == Some(("up".into(), 30))).await;
    assert_eq!(
        api(addr, "POST", "/api/v1/devices/site-1/events/CtrlPTZ", Some(json!({"channel": 0, "op": "spin"}))).await.0,
        400
    );

    // State changes are events.
    let (_, ev) = api(addr, "GET", "/api/v1/events?login_code=site-1&type=channel_state", None).await;
    assert!(ev.as_array().unwrap().iter().any(|e| e["data"]["state"] == 2), "{ev}");
    assert!(api(addr, "GET", "/api/v1/events?type=online", None).await.1.as_array().unwrap().len() == 1);

    // The device goes away: offline.
    e1_task.abort();
    wait_until("site-1 is offline", async || {
        api(addr, "GET", "/api/v1/devices/site-1", None).await.1["online"] == false
    })
    .await;

    // A restart of the cloud keeps the device and its history.
    server.abort();
    let _ = server.await;
    let (addr2, _server2) = start_cloud(&dir).await;
    let (s, d) = api(addr2, "GET", "/api/v1/devices/site-1", None).await;
    assert_eq!((s, d["name"].as_str(), d["online"].as_bool()), (200, Some("Gate"), Some(false)));
    assert!(!api(addr2, "GET", "/api/v1/events?login_code=site-1", None).await.1.as_array().unwrap().is_empty());
    // Deleting it.
    assert_eq!(api(addr2, "DELETE", "/api/v1/devices/site-1", None).await.0, 204);
    assert_eq!(api(addr2, "GET", "/api/v1/devices/site-1", None).await.0, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_login_replaces_the_old_session_and_uploads_are_one_time() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "cam-9", "login_passwd": "12345678"}))).await;
    let (a, _) = edge(addr, "cam-9", "12345678");
    let a_status = a.status();
    let a_run = tokio::spawn(a.run());
    wait_until("the first session is up", async || a_status.borrow().connected).await;
    let (b, _) = edge(addr, "cam-9", "12345678");
    let b_status = b.status();
    let b_run = tokio::spawn(b.run());
    wait_until("the second session is up", async || b_status.borrow().connected).await;
    wait_until("the first was replaced", async || a_status.borrow().sessions >= 2 || !a_status.borrow().connected)
        .await;
    // Both agents go away: a login of theirs, retried, would replace the
    // raw device below in the middle of its call (seen in CI).
    a_run.abort();
    b_run.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Alarm pictures: AlarmNotify (as a device would call it) gives a one-time URL.
    let h =
        raw_ivt(format!("ws://{addr}/ivc?login_code=cam-9&login_passwd=12345678&hardware_model=t&firmware_model=1"))
            .await;
    let r = h
        .call("AlarmNotify", Some(json!({"channel": 0, "type": 3, "state": "start", "desc": "motion at the gate"})))
        .await
        .unwrap();
    let url = r["pic_upload_url"].as_str().unwrap().to_owned();
    let path = url.split_once(&addr.to_string()).unwrap().1.to_owned();
    assert_eq!(http(addr, "POST", &path, None, Some(b"\xff\xd8\xff\xe0jpeg\xff\xd9")).await.0, 204);
    assert_eq!(http(addr, "POST", &path, None, Some(b"again")).await.0, 404, "one-time");
    let (_, ev) = api(addr, "GET", "/api/v1/events?type=alarm", None).await;
    let id = ev[0]["id"].as_i64().unwrap();
    assert_eq!(ev[0]["data"]["desc"], "motion at the gate");
    let (s, pic) = http(addr, "GET", &format!("/api/v1/events/{id}/picture"), Some(TOKEN), None).await;
    assert_eq!((s, pic.as_slice()), (200, &b"\xff\xd8\xff\xe0jpeg\xff\xd9"[..]));
    // The takeover above is on record.
    let (_, ev) = api(addr, "GET", "/api/v1/events?type=session_replaced", None).await;
    assert_eq!(ev[0]["login_code"], "cam-9", "{ev}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shell_and_the_event_stream() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    // Every console route is the shell, under a strict CSP with no inline script.
    for path in ["/", "/login", "/devices/cam%201/channels/0", "/live", "/audit", "/firmware"] {
        let (s, head, page) = common::http_with(addr, "GET", path, &[], None).await;
        assert_eq!(s, 200, "{path}");
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("src=\"/ui/app.js\"") && !page.contains("<script>"), "{page}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self';"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff") && head.contains("x-frame-options: deny"), "{head}");
    }
    let (s, head, js) = common::http_with(addr, "GET", "/ui/app.js", &[], None).await;
    assert_eq!(s, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/javascript"), "{head}");
    assert!(String::from_utf8_lossy(&js).contains("import"));
    assert_eq!(common::http_with(addr, "GET", "/ui/../Cargo.toml", &[], None).await.0, 404);
    // The OpenAPI document is served without a token and lists every route.
    let (s, doc) = http(addr, "GET", "/api/openapi.json", None, None).await;
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!((s, doc["openapi"].as_str()), (200, Some("3.0.3")));
    for p in [
        "/api/v1/stats",
        "/api/v1/nodes",
        "/api/v1/devices",
        "/api/v1/devices/{login_code}",
        "/api/v1/devices/{login_code}/rpc/{method}",
        "/api/v1/devices/{login_code}/events/{event}",
        "/api/v1/events",
        "/api/v1/stream",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} undocumented");
    }
    assert_eq!(http(addr, "GET", "/api/v1/stream", None, None).await.0, 401);
    // Follow the stream while a device comes online.
    let (mut sse, mut seen) = common::open_stream(addr, &format!("Authorization: Bearer {TOKEN}")).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "s-1", "login_passwd": "12345678"}))).await;
    let (e, _) = edge(addr, "s-1", "12345678");
    tokio::spawn(e.run());
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = sse.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("event: online") && text.contains("event: channel_state") {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "{}", String::from_utf8_lossy(&seen));
    // One node without a bus lists itself, holding the device online.
    let (s, nodes) = api(addr, "GET", "/api/v1/nodes", None).await;
    assert_eq!(s, 200, "{nodes}");
    assert_eq!(nodes["node"], "local");
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!(
        (&list[0]["id"], &list[0]["alive"], &list[0]["this"], &list[0]["devices_online"]),
        (&json!("local"), &json!(true), &json!(true), &json!(1)),
        "{nodes}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!((&list[0]["version"], &list[0]["protocol"]), (&json!(version), &json!(1)), "{nodes}");
    assert_eq!((&nodes["version"], &nodes["mixed_versions"]), (&json!(version), &Value::Null), "{nodes}");
    assert_eq!(http(addr, "GET", "/api/v1/nodes", None, None).await.0, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_alarms_and_previews_arrive_with_their_pictures() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test4-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "cam-a", "login_passwd": "12345678"}))).await;
    let cfg = EdgeConfig::parse(&format!(
        "[cloud]\nurl = \"ws://{addr}/ivc\"\nlogin_code = \"cam-a\"\nlogin_passwd = \"12345678\"\nkeepalive_secs = 1\n\n\
         [[channels]]\nchannel = 0\nsource = \"sim\"\nalarm_every_secs = 2\npreview_every_secs = 1\n\n\
         [[channels]]\nchannel = 1\nsource = \"sim\"\npreview_every_secs = 1\n"
    ))
    .unwrap();
    let chans: Vec<Arc<dyn ChannelBackend>> = vec![Arc::new(SimChannel::new(0)), Arc::new(SimChannel::new(1))];
    tokio::spawn(Edge::new(cfg, chans).run());
    // Previews of both channels.
    for ch in [0, 1] {
        let path = format!("/api/v1/devices/cam-a/channels/{ch}/preview");
        wait_until("a preview arrives", async || http(addr, "GET", &path, Some(TOKEN), None).await.0 == 200).await;
        let (_, jpeg) = http(addr, "GET", &path, Some(TOKEN), None).await;
        assert_eq!(jpeg.as_slice(), ivr_edge::SIM_JPEG, "channel {ch}");
    }
    // A motion alarm with its picture, then its end; the Keepalive shows the bit meanwhile.
    wait_until("an alarm start with a picture", async || {
        let (_, ev) = api(addr, "GET", "/api/v1/events?type=alarm&login_code=cam-a", None).await;
        ev.as_array().is_some_and(|a| a.iter().any(|e| e["data"]["state"] == "start" && e["data"]["type"] == 3))
    })
    .await;
    let (_, ev) = api(addr, "GET", "/api/v1/events?type=alarm&login_code=cam-a", None).await;
    let start = ev.as_array().unwrap().iter().find(|e| e["data"]["state"] == "start").unwrap().clone();
    let pic = format!("/api/v1/events/{}/picture", start["id"]);
    wait_until("the alarm picture is uploaded", async || http(addr, "GET", &pic, Some(TOKEN), None).await.0 == 200)
        .await;
    assert_eq!(http(addr, "GET", &pic, Some(TOKEN), None).await.1.as_slice(), ivr_edge::SIM_JPEG);
    wait_until("the alarm ends", async || {
        let (_, ev) = api(addr, "GET", "/api/v1/events?type=alarm&login_code=cam-a", None).await;
        ev.as_array().is_some_and(|a| a.iter().any(|e| e["data"]["state"] == "end"))
    })
    .await;
    // A Keepalive (every second) shows the motion bit while an alarm is on;
    // alarms repeat every 2 s, so one falls inside sooner or later (under
    // load the first alarm can start and end between two Keepalives).
    wait_until("the motion bit shows in a Keepalive", async || {
        let (_, st) = api(addr, "GET", "/api/v1/events?type=channel_state&login_code=cam-a&channel=0", None).await;
        st.as_array().is_some_and(|a| a.iter().any(|e| e["data"]["alarm"] == 8))
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Uploads raw bytes with PUT.
async fn put(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    let (s, b) = http(addr, "PUT", path, Some(TOKEN), Some(body)).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_catalogue_and_an_upgrade_end_to_end() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test5-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "up-1", "login_passwd": "12345678"}))).await;

    // Without a catalogue entry, GetFirmware is an err naming the model.
    let h = raw_ivt(format!(
        "ws://{addr}/ivc?login_code=up-1&login_passwd=12345678&hardware_model=ivr-edge&firmware_model=0.1.0"
    ))
    .await;
    let e = h.call("GetFirmware", None).await.unwrap_err();
    assert!(e.to_string().contains("no firmware in the catalogue for hardware model \"ivr-edge\""), "{e}");
    h.close().await;

    // Upload an image through the API; it is listed and downloadable.
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(put(addr, "/api/v1/firmware/ivr-edge/0.1.0", &image[..1000]).await.0, 201);
    let (s, fw) = put(addr, "/api/v1/firmware/ivr-edge/0.2.0", &image).await;
    assert_eq!((s, fw["size"].as_u64()), (201, Some(300_000)));
    assert_eq!(put(addr, "/api/v1/firmware/ivr-edge/0.3.0", b"").await.0, 400, "an empty image");
    assert_eq!(api(addr, "GET", "/api/v1/firmware", None).await.1.as_array().unwrap().len(), 2);
    let path = fw["url"].as_str().unwrap().split_once(&addr.to_string()).unwrap().1.to_owned();
    let (s, got) = http(addr, "GET", &path, None, None).await;
    assert_eq!((s, got.len()), (200, image.len()));
    assert_eq!(http(addr, "GET", "/firmware/not-a-token", None, None).await.0, 404);

    // The real edge, told to upgrade, downloads 0.2.0 and comes back with it.
    let (e, _) = edge(addr, "up-1", "12345678");
    let status = e.status();
    tokio::spawn(e.run());
    wait_until("the edge is online", async || status.borrow().connected).await;
    assert_eq!(api(addr, "GET", "/api/v1/devices/up-1", None).await.1["firmware_model"], "0.1.0");
    assert_eq!(api(addr, "POST", "/api/v1/devices/up-1/events/UpgradeFirmware", None).await.0, 202);
    wait_until("the device reports 0.2.0", async || {
        api(addr, "GET", "/api/v1/devices/up-1", None).await.1["firmware_model"] == "0.2.0"
    })
    .await;
    assert!(status.borrow().sessions >= 2, "it reconnected after installing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_fifty_simulated_ivts_comes_online() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    for i in 0..50 {
        let (code, pw) = ivr_edge::fleet::login("fleet", i);
        assert_eq!(
            api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": code, "login_passwd": pw}))).await.0,
            201
        );
    }
    let fleet = ivr_edge::fleet::start(ivr_edge::fleet::FleetConfig {
        cloud_url: format!("ws://{addr}/ivc"),
        prefix: "fleet".into(),
        first: 0,
        count: 50,
        keepalive_secs: 1,
        bind: vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
        window: 8,
        ca_file: None,
        spread: false,
    })
    .await
    .unwrap();
    wait_until("all 50 report online", async || {
        let (_, ds) = api(addr, "GET", "/api/v1/devices", None).await;
        ds.as_array().is_some_and(|a| {
            a.iter().filter(|d| d["online"] == true && d["hardware_model"] == "ivr-sim-ivt").count() == 50
        })
    })
    .await;
    // The cloud counts a device online at its login; the fleet counts it
    // once its side of the upgrade is done, a moment later.
    wait_until("the fleet counts 50 connected", async || ivr_edge::fleet::connected(&fleet) == 50).await;
    let (status, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!((stats["devices"].as_u64(), stats["sessions"].as_u64()), (Some(50), Some(50)), "{stats}");
    assert_eq!(stats["logins_refused"], 0, "{stats}");
    assert!(stats["logins"].as_u64() >= Some(50), "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_dial_wss_and_upload_over_https() {
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test7-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls = ivr_rpc::net::server_config(&cert, &key).unwrap();

    // One cloud, two doors: HTTPS for the device, plain HTTP for the test's API calls.
    let tls_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (port, addr) = (tls_l.local_addr().unwrap().port(), plain_l.local_addr().unwrap());
    let cfg = CloudConfig {
        keepalive: Duration::from_secs(1),
        ..CloudConfig::new(TOKEN.into(), format!("https://localhost:{port}"), dir.clone())
    };
    let c = Cloud::new(Arc::new(SqlStore::open(&dir).unwrap()), cfg);
    tokio::spawn(ivr_cloud::serve_tls(c.clone(), tls_l, tls));
    tokio::spawn(serve(c, plain_l));
    let new = json!({"login_code": "tls-cam", "login_passwd": "12345678"});
    assert_eq!(api(addr, "POST", "/api/v1/devices", Some(new)).await.0, 201);

    let edge_cfg = |ca: &str| {
        EdgeConfig::parse(&format!(
            "[cloud]\nurl = \"wss://localhost:{port}/ivc\"\nlogin_code = \"tls-cam\"\nlogin_passwd = \"12345678\"\nkeepalive_secs = 1\n{ca}\n\
             [[channels]]\nchannel = 0\nsource = \"sim\"\npreview_every_secs = 1\n"
        ))
        .unwrap()
    };
    // Without our CA the device refuses the cloud's certificate, and says why.
    let stranger = Edge::with_backoff(
        edge_cfg(""),
        vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>],
        Backoff::new(Duration::from_millis(50), Duration::from_millis(300)),
    );
    let mut st = stranger.status();
    let run = tokio::spawn(stranger.clone().run());
    tokio::time::timeout(Duration::from_secs(10), st.wait_for(|s| s.last_error.is_some())).await.unwrap().unwrap();
    let why = st.borrow().last_error.clone().unwrap();
    assert!(why.contains("certificate") || why.contains("UnknownIssuer"), "{why}");
    assert!(!st.borrow().connected);
    run.abort();

    // With it: online over wss, RPC through the API, a preview over https.
    let ca = format!("ca_file = \"{}\"", cert.display());
    let edge = Edge::new(edge_cfg(&ca), vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>]);
    edge.preflight().unwrap();
    tokio::spawn(edge.run());
    wait_until("the device is online over wss", async || {
        api(addr, "GET", "/api/v1/devices/tls-cam", None).await.1["online"] == true
    })
    .await;
    let (status, nets) =
        api(addr, "POST", "/api/v1/devices/tls-cam/rpc/GetNetConfig", Some(json!({"channel": 0}))).await;
    assert_eq!(status, 200, "{nets}");
    assert!(nets[0]["ip"].is_string(), "{nets}");
    let path = "/api/v1/devices/tls-cam/channels/0/preview";
    wait_until("a preview arrives over https", async || http(addr, "GET", path, Some(TOKEN), None).await.0 == 200)
        .await;
    assert_eq!(http(addr, "GET", path, Some(TOKEN), None).await.1.as_slice(), ivr_edge::SIM_JPEG);

    // A bad CA file is named before any dialling.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "junk").unwrap();
    let e = Edge::new(edge_cfg(&format!("ca_file = \"{}\"", bad.display())), vec![]).preflight().unwrap_err();
    assert!(e.0.contains("bad.pem") && e.0.contains("ca_file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads frames until the close; its reason.
async fn close_reason<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as M;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let M::Close(Some(c)) = m {
            return c.reason.to_string();
        }
    }
    String::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_device_that_pipelines_or_never_answers() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as M;
    let dir = std::env::temp_dir().join(format!("ivr-cloud-test8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, _server) = start_cloud(&dir).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "rude", "login_passwd": "12345678"}))).await;
    let url = format!("ws://{addr}/ivc?login_code=rude&login_passwd=12345678&hardware_model=t&firmware_model=1");
    let keepalive = |seq: u64| {
        M::Text(json!({"seq": seq, "req": "Keepalive", "params": {"state": 1, "channels": []}}).to_string().into())
    };

    // Rule 2: a second Keepalive before the first is answered (one write).
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.feed(keepalive(1)).await.unwrap();
    ws.feed(keepalive(2)).await.unwrap();
    ws.flush().await.unwrap();
    let reason = close_reason(&mut ws).await;
    assert!(reason.starts_with("IVR RPC rule 2"), "{reason:?}");

    // Rule 3: the cloud's request (through the API) is never answered.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    wait_until("online again", async || api(addr, "GET", "/api/v1/devices/rude", None).await.1["online"] == true).await;
    let call = tokio::spawn(async move {
        api(addr, "POST", "/api/v1/devices/rude/rpc/GetNetConfig", Some(json!({"channel": 0}))).await
    });
    let req = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert!(req.to_text().unwrap().contains("\"req\":\"GetNetConfig\""), "{req:?}");
    let t0 = std::time::Instant::now();
    let reason = close_reason(&mut ws).await;
    assert!(reason.starts_with("IVR RPC rule 3"), "{reason:?}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed after the response timeout, not before");
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("rule 3"), "{body}");
    wait_until("offline", async || api(addr, "GET", "/api/v1/devices/rude", None).await.1["online"] == false).await;
    let (_, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(stats["sessions_closed_by_rule"], 2, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}
