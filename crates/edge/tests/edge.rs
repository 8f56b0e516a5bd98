//! The edge agent against a cloud stood up in the test (ivr-rpc's IVC peer
//! over a real WebSocket): login URL, Keepalive with real channel states,
//! every IVT method and event through the simulated backend, reconnection,
//! and closing a misbehaving cloud.

// tungstenite's handshake callback fixes its (large) error type.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use ivr_edge::{Backoff, ChannelBackend, Edge, EdgeConfig, SimChannel};
use ivr_rpc::catalogue::{ChannelState, IvcRequest};
use ivr_rpc::conn::{self, Handler, RpcHandle};
use ivr_rpc::ws::WsFrames;
use ivr_rpc::{Peer, RpcError};
use ivr_testkit::wait_until;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Default)]
struct Cloud {
    keepalives: Mutex<Vec<Value>>,
}

impl Handler for Cloud {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        match IvcRequest::parse(&method, params.as_ref())? {
            IvcRequest::Keepalive(_) => {
                self.keepalives.lock().unwrap().push(params.unwrap_or_default());
                Ok(json!({}))
            }
            IvcRequest::GetFirmware => Ok(json!({"firmware_model": "0.2.0", "url": "http://127.0.0.1/fw"})),
            _ => Ok(json!({})),
        }
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

struct Accepted {
    uri: String,
    ivc: RpcHandle,
}

async fn cloud() -> (String, Arc<Cloud>, tokio::sync::mpsc::Receiver<Accepted>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ivc", l.local_addr().unwrap());
    let state = Arc::new(Cloud::default());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let handler = state.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let uri = Arc::new(Mutex::new(String::new()));
            let u = uri.clone();
            let ws = tokio_tungstenite::accept_hdr_async(s, move |req: &Request, resp: Response| {
                *u.lock().unwrap() = req.uri().to_string();
                Ok(resp)
            })
            .await
            .unwrap();
            let (ivc, _) = conn::spawn(WsFrames::new(ws), Peer::ivc(), handler.clone());
            let uri = uri.lock().unwrap().clone();
            let _ = tx.send(Accepted { uri, ivc }).await;
        }
    });
    (url, state, rx)
}

fn config(url: &str, keepalive: u64) -> EdgeConfig {
    EdgeConfig::parse(&format!(
        "[cloud]\nurl = \"{url}\"\nlogin_code = \"site-1\"\nlogin_passwd = \"p w\"\nkeepalive_secs = {keepalive}\n\n[[channels]]\nchannel = 0\nsource = \"sim\"\n\n[[channels]]\nchannel = 1\nsource = \"sim\"\n"
    ))
    .unwrap()
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_every_method_with_the_seeds_semantics() {
    let (url, cloud_state, mut accepted) = cloud().await;
    let ch0 = Arc::new(SimChannel::new(0).with_reboot_time(Duration::from_millis(300)));
    let ch1 = Arc::new(SimChannel::new(1));
    let edge = Edge::with_backoff(config(&url, 1), vec![ch0.clone() as Arc<dyn ChannelBackend>, ch1.clone()], fast());
    tokio::spawn(edge.clone().run());
    let a = tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.unwrap().unwrap();
    assert_eq!(a.uri, "/ivc?login_code=site-1&login_passwd=p%20w&hardware_model=ivr-edge&firmware_model=0.1.0");
    let ivc = a.ivc;

    // Publishing: success, again success, too-large bitrate is error 11.
    let publish =
        json!({"channel": 1, "quality": "hd", "url": "rtmp://127.0.0.1/live/s1", "stream_id": "s1", "max_bitrate": 0});
    assert_eq!(ivc.call("RTMPPublish", Some(publish.clone())).await.unwrap(), json!({}));
    assert_eq!(ivc.call("RTMPPublish", Some(publish)).await.unwrap(), json!({}), "already publishing is success");
    let e = ivc
        .call(
            "RTMPPublish",
            Some(
                json!({"channel": 1, "quality": "fhd", "url": "rtmp://x", "stream_id": "s2", "max_bitrate": 1_000_000}),
            ),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("error 11"), "{e}");
    assert_eq!(ch1.state(), ChannelState::Live);
    // Recording: the session shows in the next Keepalive.
    let rec = json!({"session_id": "0123456789abcdefghijkl", "channel": 1, "quality": "sd", "max_bitrate": 0, "seg_duration": 10,
                     "seg_max_size": 4000000, "seg_max_count": 6, "prerecord_seconds": 5, "start_ts": 0, "cbk_url": "http://127.0.0.1/cb"});
    ivc.call("StartCloudRecord", Some(rec)).await.unwrap();
    wait_until("a Keepalive with the recording", async || {
        // The channel is live (state 2) since RTMPPublish: the Keepalive
        // wanted is the first that names the recording's session.
        cloud_state.keepalives.lock().unwrap().last().is_some_and(|k| k["channels"][1]["record_session"].is_string())
    })
    .await;
    let last = cloud_state.keepalives.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["channels"][1], json!({"channel": 1, "state": 2, "record_session": "0123456789abcdefghijkl"}));
    assert_eq!(last["channels"][0], json!({"channel": 0, "state": 1}));
    // Stopping what does not exist is success.
    assert_eq!(ivc.call("RTMPStopPublish", Some(json!({"stream_id": "nope", "channel": 1}))).await.unwrap(), json!({}));
    assert_eq!(
        ivc.call("StopCloudRecord", Some(json!({"session_id": "nope", "channel": 1}))).await.unwrap(),
        json!({})
    );
    ivc.call("RTMPStopPublish", Some(json!({"stream_id": "s1", "channel": 1}))).await.unwrap();
    assert_eq!(ch1.state(), ChannelState::Online);

    // Lists, detection, net and publish config.
    assert_eq!(ivc.call("GetPTZPresetList", Some(json!({"channel": 0}))).await.unwrap().as_array().unwrap().len(), 3);
    assert_eq!(ivc.call("GetPTZPresetTourList", Some(json!({"channel": 0}))).await.unwrap()[0]["token"], "t1");
    ivc.call("AlarmMoveDetectConfig", Some(json!({"channel": 0, "enable": true, "sensitivity": 80, "delay": 3})))
        .await
        .unwrap();
    assert!(ch0.motion().enable && ch0.motion().sensitivity == 80);
    ivc.call(
        "AlarmRectIntrusionDetectConfig",
        Some(json!({"channel": 0, "enable": true, "sensitivity": 60, "delay": 3})),
    )
    .await
    .unwrap();
    assert_eq!(ch0.intrusion().rect, Some([10, 10, 90, 10, 10, 90, 90, 90]), "absent rect keeps the current one");
    assert_eq!(ivc.call("GetNetConfig", Some(json!({"channel": 1}))).await.unwrap()[0]["name"], "eth0");
    ivc.call("SetRTMPPublishConfig", Some(json!([{"enable": true, "channel": 0, "quality": "ld", "url": "rtmp://a"}])))
        .await
        .unwrap();
    let cfg = ivc.call("GetRTMPPublishConfig", None).await.unwrap();
    assert_eq!(cfg[0], json!({"enable": true, "channel": 0, "quality": "ld", "url": "rtmp://a"}));
    let e = ivc
        .call("SetRTMPPublishConfig", Some(json!([{"enable": true, "channel": 7, "quality": "ld", "url": "rtmp://a"}])))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("params.[0].channel: no channel 7"), "{e}");
    let e = ivc.call("RebootChannel", Some(json!({"channel": 5}))).await.unwrap_err();
    assert!(e.to_string().contains("no channel 5"), "{e}");

    // Events.
    ivc.notify("CtrlPTZ", Some(json!({"channel": 0, "op": "left", "value": 40}))).await;
    ivc.notify("GotoPTZPreset", Some(json!({"channel": 1, "token": "2"}))).await;
    ivc.notify("CtrlPTZPresetTour", Some(json!({"channel": 1, "token": "t1", "op": "start"}))).await;
    ivc.notify("SyncTime", Some(json!({"datetime": "2030-01-02T03:04:05", "offset": 2}))).await;
    // Each event is handled in a task of its own, in any order.
    wait_until("the four events handled", async || {
        ch0.ptz().moving.is_some()
            && ch1.ptz().at_preset.is_some()
            && ch1.ptz().touring.is_some()
            && ch0.clock().format("%Y").to_string() == "2030"
            && ch1.clock().format("%Y").to_string() == "2030"
    })
    .await;
    assert_eq!(ch0.ptz().moving, Some(("left".into(), 40)));
    assert_eq!(ch1.ptz().at_preset.as_deref(), Some("2"));
    assert_eq!(ch1.ptz().touring.as_deref(), Some("t1"));
    assert!(ch0.clock().format("%Y").to_string() == "2030" && ch1.clock().format("%Y").to_string() == "2030");
    ivc.notify("CtrlPTZ", Some(json!({"channel": 0, "op": "stop"}))).await;
    wait_until("the camera stopped", async || ch0.ptz().moving.is_none()).await;

    // Reboot: offline in the Keepalive, then back.
    ivc.call("RebootChannel", Some(json!({"channel": 0}))).await.unwrap();
    assert_eq!(ch0.state(), ChannelState::Offline);
    wait_until("the channel back after its reboot", async || ch0.state() == ChannelState::Online).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_cloud_drops_it() {
    let (url, cloud_state, mut accepted) = cloud().await;
    let edge =
        Edge::with_backoff(config(&url, 30), vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>], fast());
    let status = edge.status();
    tokio::spawn(edge.run());
    let first = tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.unwrap().unwrap();
    wait_until("a Keepalive right after connecting", async || !cloud_state.keepalives.lock().unwrap().is_empty()).await;
    assert_eq!(cloud_state.keepalives.lock().unwrap().len(), 1, "one Keepalive, the next 30 s later");
    first.ivc.close().await;
    let second = tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.unwrap().unwrap();
    assert!(second.uri.contains("login_code=site-1"));
    wait_until("the second session counted", async || status.borrow().sessions == 2).await;
    assert!(status.borrow().connected);
}

/// A raw cloud that breaks one rule right after the first Keepalive; the
/// edge must close with that rule named and say so in its status.
async fn provoke(rule: u8) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ivc", l.local_addr().unwrap());
    let edge =
        Edge::with_backoff(config(&url, 30), vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>], fast());
    edge.set_response_timeout(Duration::from_millis(500));
    let status = edge.status();
    tokio::spawn(edge.run());
    let (s, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"req\":\"Keepalive\""));
    let text = |t: &str| WsMessage::Text(t.to_owned().into());
    match rule {
        // A response whose seq is not the request's.
        1 => ws.send(text(r#"{"seq": 99, "resp": {}}"#)).await.unwrap(),
        // Two requests in one write: the second before the first is answered.
        2 => {
            ws.send(text(r#"{"seq": 1, "resp": {}}"#)).await.unwrap();
            ws.feed(text(r#"{"seq": 1, "req": "GetNetConfig", "params": {"channel": 0}}"#)).await.unwrap();
            ws.feed(text(r#"{"seq": 2, "req": "GetNetConfig", "params": {"channel": 0}}"#)).await.unwrap();
            ws.flush().await.unwrap();
        }
        // Never answer the Keepalive.
        3 => {}
        4 => ws.send(text(r#"{"seq": 1, "req": "FormatDisk"}"#)).await.unwrap(),
        5 => ws.send(text("this is not JSON")).await.unwrap(),
        _ => unreachable!(),
    }
    let mut reason = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let WsMessage::Close(Some(c)) = m {
            reason = Some(c.reason.to_string());
        }
    }
    let reason = reason.unwrap_or_default();
    assert!(reason.starts_with(&format!("IVR RPC rule {rule}")), "rule {rule}: close reason {reason:?}");
    wait_until("the status says why", async || {
        status.borrow().last_error.as_deref().is_some_and(|e| e.contains(&format!("rule {rule}")))
    })
    .await;
    let err = status.borrow().last_error.clone().unwrap_or_default();
    assert!(err.contains(&format!("rule {rule}")), "rule {rule}: status says {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_cloud_that_breaks_any_of_the_five_rules() {
    for rule in 1..=5 {
        provoke(rule).await;
    }
}
