//! Three cloud nodes on one PostgreSQL and one NATS (both real, started
//! here): any node serves any device, events cross the bus, a login on
//! another node takes the session over, and a node that dies hands its
//! devices to the others. Each node runs on its own runtime, so "killing"
//! one drops every task and socket it had at once, as `kill -9` would.

mod common;

use common::{api, raw_ivt, TOKEN};
use futures_util::StreamExt;
use ivr_cloud::{serve, Cloud, CloudConfig, SqlStore, Store};
use ivr_edge::{Backoff, ChannelBackend, Edge, EdgeConfig, SimChannel};
use ivr_testkit::services::{Nats, Postgres};
use ivr_testkit::wait_until;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

struct Node {
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
}

fn start_node(store: &str, bus: &str, id: &str, dir: &Path) -> Node {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (store, bus, id, dir) = (store.to_owned(), bus.to_owned(), id.to_owned(), dir.to_path_buf());
    let h = rt.handle().clone();
    // Blocking on the node's runtime from a thread of its own (the test's
    // runtime cannot block).
    let addr = std::thread::spawn(move || {
        h.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let s = Arc::new(SqlStore::postgres(&store).await.unwrap());
            let cfg = CloudConfig {
                keepalive: Duration::from_secs(1),
                rpc_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(3),
                hash_cost: "m=64,t=1,p=1".parse().unwrap(),
                node_id: id,
                ..CloudConfig::new(TOKEN.into(), format!("http://{addr}"), dir)
            };
            let c = Cloud::new(s, cfg);
            c.join_bus(&bus).await.unwrap();
            c.reset_sessions().await.unwrap();
            tokio::spawn(async move { serve(c, l).await.unwrap() });
            addr
        })
    })
    .join()
    .unwrap();
    Node { addr, rt }
}

fn edge(urls: &[SocketAddr], code: &str, pw: &str) -> Arc<Edge> {
    let list: Vec<String> = urls.iter().map(|a| format!("\"ws://{a}/ivc\"")).collect();
    let cfg = EdgeConfig::parse(&format!(
        "[cloud]\nurls = [{}]\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nkeepalive_secs = 1\n\n[[channels]]\nchannel = 0\nsource = \"sim\"\n",
        list.join(", ")
    ))
    .unwrap();
    Edge::with_backoff(
        cfg,
        vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>],
        Backoff::new(Duration::from_millis(50), Duration::from_millis(300)),
    )
}

fn ivc(addr: SocketAddr, code: &str, pw: &str) -> String {
    format!("ws://{addr}/ivc?login_code={code}&login_passwd={pw}&hardware_model=raw&firmware_model=1")
}

async fn device(addr: SocketAddr, lc: &str) -> Value {
    api(addr, "GET", &format!("/api/v1/devices/{lc}"), None).await.1
}

/// Reads node `addr`'s event stream until a line has `needle`.
async fn stream_until(open: (tokio::net::TcpStream, Vec<u8>), needle: &str) -> String {
    let (mut s, mut seen) = open;
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen);
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("events in time").unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_any_device_and_take_over_a_dead_ones() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let store = pg.database("cluster");
    let dir = std::env::temp_dir().join(format!("ivr-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let n1 = start_node(&store, &nats.url(), "n1", &dir);
    let n2 = start_node(&store, &nats.url(), "n2", &dir);
    let n3 = start_node(&store, &nats.url(), "n3", &dir);
    let (a1, a2, a3) = (n1.addr, n2.addr, n3.addr);

    for lc in ["cam-1", "cam-2", "cam-3"] {
        let (s, v) =
            api(a1, "POST", "/api/v1/devices", Some(json!({"login_code": lc, "login_passwd": "pw-123456"}))).await;
        assert_eq!(s, 201, "{v}");
    }
    // Provisioned through node 1, seen by node 3 (one database).
    assert_eq!(api(a3, "GET", "/api/v1/devices", None).await.1.as_array().unwrap().len(), 3);

    // Every node's heartbeat says what it runs; all alike, nothing mixed.
    let (_, nodes) = api(a2, "GET", "/api/v1/nodes", None).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        (&nodes["version"], &nodes["protocol"], &nodes["mixed_versions"]),
        (&json!(version), &json!(1), &Value::Null)
    );
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!((&n["version"], &n["protocol"]), (&json!(version), &json!(1)), "{nodes}");
    }
    // A node of the release before (its heartbeat writes no version) joins
    // mid-upgrade: the list says the versions differ, and which.
    let old = SqlStore::postgres(&store).await.unwrap();
    old.node_alive("n0", "http://old.example", "", 0, chrono::Utc::now().timestamp()).await.unwrap();
    let (_, nodes) = api(a3, "GET", "/api/v1/nodes", None).await;
    assert_eq!(nodes["mixed_versions"], json!(["", version]), "{nodes}");
    let n0 = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n0").cloned().unwrap();
    assert_eq!((&n0["version"], &n0["protocol"], &n0["alive"]), (&json!(""), &json!(0), &json!(true)), "{nodes}");
    // It stops (or is upgraded away): once its heartbeat is stale, the
    // running nodes agree again.
    old.node_alive("n0", "http://old.example", "", 0, 0).await.unwrap();
    assert_eq!(api(a3, "GET", "/api/v1/nodes", None).await.1["mixed_versions"], Value::Null);

    // An edge that knows all three nodes lands on the first.
    let e = edge(&[a1, a2, a3], "cam-1", "pw-123456");
    tokio::spawn(e.clone().run());
    wait_until("cam-1 online on n1", async || {
        let d = device(a2, "cam-1").await;
        d["online"] == true && d["node"] == "n1"
    })
    .await;

    // An RPC sent to node 3 reaches the device on node 1, and answers;
    // what crosses the bus names the caller but never carries the token.
    let bus = async_nats::connect(nats.url()).await.unwrap();
    let mut overheard = bus.subscribe("ivr.node.>").await.unwrap();
    // A flush only writes the subscription out; the server has taken it
    // once this connection's own message, sent after it, comes back
    // (nobody else answers on that subject).
    bus.publish("ivr.node.listening", "".into()).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), overheard.next()).await.unwrap().unwrap();
    assert_eq!(echo.subject.as_str(), "ivr.node.listening");
    let (s, v) = api(a3, "POST", "/api/v1/devices/cam-1/rpc/GetPTZPresetList", Some(json!({"channel": 0}))).await;
    assert_eq!((s, v[0]["token"].as_str()), (200, Some("1")), "{v}");
    let relayed = tokio::time::timeout(Duration::from_secs(5), overheard.next()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&relayed.payload).into_owned();
    assert!(text.contains("admin-token") && !text.contains(TOKEN), "{text}");
    assert!(text.contains("\"bus\":1"), "a relayed request says its cluster protocol: {text}");
    // The bus alone cannot make a node act: a copy altered in one byte, or
    // a request signed without the admin token, is refused.
    let mut altered = relayed.payload.to_vec();
    let at = altered.len() - 3;
    altered[at] ^= 1;
    for forged in [altered, [vec![0u8; 32], relayed.payload[32..].to_vec()].concat()] {
        let answer = bus.request("ivr.node.n1.http", forged.into()).await.unwrap();
        let head = String::from_utf8_lossy(&answer.payload).into_owned();
        assert!(head.starts_with("{\"status\":403"), "{head}");
    }
    // The caller's rights cross with them: a viewer's token reaches the
    // device's node and is refused there as it would be locally.
    let (s, t) =
        api(a1, "POST", "/api/v1/tokens", Some(json!({"name": "watcher", "role": "viewer", "devices": ["cam-1"]})))
            .await;
    assert_eq!(s, 201, "{t}");
    let viewer = t["token"].as_str().unwrap().to_owned();
    let path = "/api/v1/devices/cam-1/rpc/GetPTZPresetList";
    let (s, body) = common::http(a3, "POST", path, Some(&viewer), Some(br#"{"channel":0}"#)).await;
    assert_eq!(s, 403, "{}", String::from_utf8_lossy(&body));
    let (s, _) = common::http(a3, "POST", "/api/v1/devices/cam-2/rpc/GetTime", Some(&viewer), None).await;
    assert_eq!(s, 404, "a device outside the viewer's grant is not found, on any node");
    // Node 3 now trusts a copy of the viewer's token; revoked through
    // node 1, it is refused on node 3 as soon as the revocation answers
    // (node 1 answers once every copy from before has run out).
    let id = t["id"].as_str().unwrap();
    let (s, _) = common::http(a3, "GET", "/api/v1/devices", Some(&viewer), None).await;
    assert_eq!(s, 200);
    assert!(api(a3, "GET", "/api/v1/stats", None).await.1["credentials"]["trusted"].as_u64() >= Some(1));
    let t0 = std::time::Instant::now();
    assert_eq!(api(a1, "DELETE", &format!("/api/v1/tokens/{id}"), None).await.0, 204);
    assert!(t0.elapsed() >= Duration::from_secs(1), "answered before the other nodes' copies ran out");
    let (s, _) = common::http(a3, "GET", "/api/v1/devices", Some(&viewer), None).await;
    assert_eq!(s, 401, "a token revoked on node 1 still works on node 3");
    let (s, _) = api(a3, "POST", "/api/v1/devices/cam-1/rpc/NoSuchMethod", Some(json!({}))).await;
    assert_eq!(s, 404, "the same statuses as on the holder");
    assert_eq!(api(a3, "POST", "/api/v1/devices/nobody/rpc/GetTime", None).await.0, 404);
    // Node 3 knew where cam-1 was from the bus's takeover (no database
    // read), handed the call to node 1, and node 1 served it.
    let k3 = api(a3, "GET", "/api/v1/stats", None).await.1["cluster"].clone();
    assert!(k3["holders_known"].as_u64() >= Some(1) && k3["relayed_out"].as_u64() >= Some(2), "{k3}");
    assert_eq!((k3["node"].as_str(), k3["on_bus"].as_bool()), (Some("n3"), Some(true)), "{k3}");
    let k1 = api(a1, "GET", "/api/v1/stats", None).await.1["cluster"].clone();
    assert!(k1["relayed_in"].as_u64() >= Some(2), "{k1}");

    // cam-2 on node 1: its alarm appears in node 2's event stream.
    let raw1 = raw_ivt(ivc(a1, "cam-2", "pw-123456")).await;
    wait_until("cam-2 online", async || device(a3, "cam-2").await["node"] == "n1").await;
    let open = common::open_stream(a2, &format!("Authorization: Bearer {TOKEN}")).await;
    let watch = tokio::spawn(stream_until(open, "\"kind\":\"alarm\""));
    raw1.call("AlarmNotify", Some(json!({"channel": 0, "type": 3, "state": "start", "desc": "across"}))).await.unwrap();
    let line = watch.await.unwrap();
    assert!(line.contains("cam-2") && line.contains("across"), "{line}");

    // cam-2 logs in on node 2: node 1 closes its session and can no
    // longer act for it; its requests go to node 2's session.
    let raw2 = raw_ivt(ivc(a2, "cam-2", "pw-123456")).await;
    wait_until("node 1's session of cam-2 closed", async || raw1.is_closed()).await;
    let d = device(a1, "cam-2").await;
    assert_eq!((d["online"].as_bool(), d["node"].as_str()), (Some(true), Some("n2")), "{d}");
    let (s, _) = api(a1, "POST", "/api/v1/devices/cam-2/rpc/GetPTZPresetList", Some(json!({"channel": 0}))).await;
    assert_eq!(s, 200, "answered by the session on node 2");
    assert!(!raw2.is_closed());
    // The takeover left it online: no offline event from node 1.
    let ev = api(a3, "GET", "/api/v1/events?login_code=cam-2&type=offline", None).await.1;
    assert_eq!(ev.as_array().unwrap().len(), 0, "{ev}");

    // A batch through node 3 for devices on nodes 1 and 2: one bus message
    // to each, every call answered by its holder with its own status.
    let k_before = api(a3, "GET", "/api/v1/stats", None).await.1["cluster"].clone();
    let out_before = k_before["relayed_out"].as_u64().unwrap();
    let list = |lc: &str| json!({"device": lc, "method": "GetPTZPresetList", "params": {"channel": 0}});
    let batch = json!({"calls": [
        list("cam-1"), list("cam-2"), list("cam-1"),
        {"device": "cam-2", "method": "NoSuchMethod"},
        {"device": "cam-3", "method": "GetNetConfig", "params": {"channel": 0}},
        {"device": "nobody", "method": "GetNetConfig", "params": {"channel": 0}},
    ]});
    let (s, v) = api(a3, "POST", "/api/v1/rpc", Some(batch)).await;
    assert_eq!((s, &v["ok"]), (200, &json!(3)), "{v}");
    let statuses: Vec<u64> = v["results"].as_array().unwrap().iter().filter_map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 409, 404], "{v}");
    assert_eq!(v["results"][2]["answer"][0]["token"], "1", "{v}");
    assert!(v["results"][4]["error"].as_str().unwrap().contains("offline"), "{v}");
    let k_after = api(a3, "GET", "/api/v1/stats", None).await.1["cluster"].clone();
    let out_after = k_after["relayed_out"].as_u64().unwrap();
    assert_eq!(out_after - out_before, 2, "one message to each holder, not one a call");
    // cam-3 (offline) and "nobody" were never named by the bus: where
    // they are is one read of the store for both, not one each.
    let reads = k_after["holder_reads"].as_u64().unwrap() - k_before["holder_reads"].as_u64().unwrap();
    assert_eq!(reads, 1, "{k_before} -> {k_after}");

    // cam-3 on node 1 without a way back; then node 1 dies.
    let _raw3 = raw_ivt(ivc(a1, "cam-3", "pw-123456")).await;
    wait_until("cam-3 online", async || device(a2, "cam-3").await["node"] == "n1").await;
    n1.rt.shutdown_background();
    // The edge moves to the next node; cam-3 goes offline once node 1's
    // heartbeat is three Keepalive intervals old.
    for _ in 0..200 {
        let d = device(a2, "cam-1").await;
        if d["online"] == true && d["node"] != "n1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = device(a2, "cam-1").await;
    assert!(d["online"] == true && (d["node"] == "n2" || d["node"] == "n3"), "{d}");
    let mut gone = false;
    for _ in 0..200 {
        let d = device(a3, "cam-3").await;
        if d["online"] == false && d.get("node").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "cam-3 went offline: {}", device(a3, "cam-3").await);
    // A batch for a device of the dead node (the bus last named node 1,
    // which nobody answers for any more): that call fails alone, as
    // offline, and the moved device answers from its new node.
    let batch = json!({"calls": [
        {"device": "cam-3", "method": "GetNetConfig", "params": {"channel": 0}},
        {"device": "cam-1", "method": "GetPTZPresetList", "params": {"channel": 0}},
    ]});
    let (s, v) = api(a3, "POST", "/api/v1/rpc", Some(batch)).await;
    assert_eq!((s, &v["results"][0]["status"], &v["results"][1]["status"]), (200, &json!(409), &json!(200)), "{v}");
    let ev = api(a2, "GET", "/api/v1/events?login_code=cam-3&type=offline", None).await.1;
    assert!(ev[0]["data"]["reason"].as_str().unwrap().contains("stopped"), "{ev}");
    // Nothing is online without a session: every online device is held
    // by a live node.
    for d in api(a2, "GET", "/api/v1/devices", None).await.1.as_array().unwrap() {
        assert!(d["online"] == false || d["node"] == "n2" || d["node"] == "n3", "{d}");
    }
    n2.rt.shutdown_background();
    n3.rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
