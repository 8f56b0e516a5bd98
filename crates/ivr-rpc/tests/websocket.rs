//! Two peers over a real WebSocket on loopback: calls both ways, params
//! errors, events, and the disconnect rules arriving as close frames whose
//! reason names the rule.

use futures_util::{SinkExt, StreamExt};
use ivr_rpc::catalogue::{IvcRequest, IvtEvent, IvtRequest};
use ivr_rpc::conn::{self, CallError, Handler};
use ivr_rpc::ws::{login_url, WsFrames};
use ivr_rpc::{Peer, RpcError, Rule};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The cloud side: serves the IVC methods, validating with the catalogue.
struct Cloud {
    keepalives: Mutex<Vec<IvcRequest>>,
    stall: bool,
}

impl Handler for Cloud {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        if self.stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let req = IvcRequest::parse(&method, params.as_ref())?;
        match req {
            IvcRequest::Keepalive(_) => {
                self.keepalives.lock().unwrap().push(req);
                Ok(json!({}))
            }
            IvcRequest::GetFirmware => Err(RpcError::new(1, "no firmware for this model")),
            IvcRequest::PreviewServer => Ok(json!({"url": "http://127.0.0.1/preview/1"})),
            IvcRequest::AlarmNotify(_) => Ok(json!({"pic_upload_url": "http://127.0.0.1/pic/1"})),
        }
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

/// The device side: records the events it gets, serves RebootChannel.
#[derive(Default)]
struct Device {
    events: Mutex<Vec<IvtEvent>>,
}

impl Handler for Device {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        match IvtRequest::parse(&method, params.as_ref())? {
            IvtRequest::RebootChannel { channel: 0 } => Ok(json!({})),
            IvtRequest::GetPtzPresetList { .. } => Ok(json!([{"name": "door", "token": "1"}])),
            _ => Err(RpcError::new(1, "not supported by this device")),
        }
    }
    async fn event(&self, name: String, params: Option<Value>) {
        if let Ok(e) = IvtEvent::parse(&name, params.as_ref()) {
            self.events.lock().unwrap().push(e);
        }
    }
}

async fn cloud(
    stall: bool,
    timeout: Duration,
) -> (String, Arc<Cloud>, tokio::sync::mpsc::Receiver<(conn::RpcHandle, tokio::task::JoinHandle<Option<ivr_rpc::Close>>)>)
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ivc", l.local_addr().unwrap());
    let c = Arc::new(Cloud { keepalives: Mutex::default(), stall });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let handler = c.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let ws = tokio_tungstenite::accept_async(s).await.unwrap();
            let pair = conn::spawn(WsFrames::new(ws), Peer::ivc().with_timeout(timeout), handler.clone());
            let _ = tx.send(pair).await;
        }
    });
    (url, c, rx)
}

#[tokio::test]
async fn calls_both_ways_params_errors_and_events() {
    let (url, cloud_state, mut accepted) = cloud(false, Duration::from_secs(20)).await;
    let (ws, _) = tokio_tungstenite::connect_async(login_url(&url, "site-1", "pw", "ivr-edge", "0.1.0")).await.unwrap();
    let device = Arc::new(Device::default());
    let (ivt, _task) = conn::spawn(WsFrames::new(ws), Peer::ivt(), device.clone());
    let (ivc, _) = accepted.recv().await.unwrap();

    let r = ivt.call("Keepalive", Some(json!({"state": 1, "channels": [{"channel": 0, "state": 1}]}))).await.unwrap();
    assert_eq!(r, json!({}));
    assert_eq!(cloud_state.keepalives.lock().unwrap().len(), 1);
    let e = ivt.call("Keepalive", Some(json!({"state": 9, "channels": []}))).await.unwrap_err();
    assert_eq!(
        e,
        CallError::Remote {
            method: "Keepalive".into(),
            err: RpcError::new(1, "params.state: 9 is out of range 1..=3")
        }
    );
    let e = ivt.call("GetFirmware", None).await.unwrap_err();
    assert!(e.to_string().contains("no firmware"), "{e}");
    // Many concurrent callers: queued, answered in order, none lost.
    let mut calls = Vec::new();
    for _ in 0..20 {
        let h = ivt.clone();
        calls.push(tokio::spawn(async move { h.call("preview_server", None).await }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap()["url"], "http://127.0.0.1/preview/1");
    }
    // The cloud calls the device, and sends it events.
    assert_eq!(ivc.call("RebootChannel", Some(json!({"channel": 0}))).await.unwrap(), json!({}));
    assert_eq!(ivc.call("GetPTZPresetList", Some(json!({"channel": 0}))).await.unwrap()[0]["token"], "1");
    assert!(ivc.notify("SyncTime", Some(json!({"datetime": "2016-12-05T02:15:32", "offset": 5}))).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(device.events.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_malformed_packet_closes_with_rule_5_named() {
    let (url, _, mut accepted) = cloud(false, Duration::from_secs(20)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    ws.send(WsMessage::Text(r#"{"req": "Keepalive", "seq": "one"}"#.into())).await.unwrap();
    let (_, task) = accepted.recv().await.unwrap();
    let close = task.await.unwrap().unwrap();
    assert_eq!(close.rule, Rule::Malformed);
    let mut reason = None;
    while let Some(Ok(m)) = ws.next().await {
        if let WsMessage::Close(Some(c)) = m {
            reason = Some(c.reason.to_string());
        }
    }
    let reason = reason.expect("a close frame");
    assert!(reason.starts_with("IVR RPC rule 5 (malformed packet)"), "{reason}");
}

#[tokio::test]
async fn unknown_method_closes_with_rule_4_and_a_silent_peer_with_rule_3() {
    let (url, _, mut accepted) = cloud(false, Duration::from_secs(20)).await;
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let (ivt, _) = conn::spawn(WsFrames::new(ws), Peer::ivt(), Arc::new(Device::default()));
    // The IVC does not serve RTMPPublish: rule 4, and our call is abandoned.
    let e = ivt.call("RTMPPublish", Some(json!({}))).await.unwrap_err();
    assert!(matches!(e, CallError::Closed { .. }), "{e}");
    let (_, task) = accepted.recv().await.unwrap();
    assert_eq!(task.await.unwrap().unwrap().rule, Rule::UnknownMethod);

    // A cloud that never answers: our side closes after its (short) limit.
    let (url, _, _accepted) = cloud(true, Duration::from_secs(20)).await;
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let (ivt, task) = conn::spawn(
        WsFrames::new(ws),
        Peer::ivt().with_timeout(Duration::from_millis(300)),
        Arc::new(Device::default()),
    );
    let t0 = std::time::Instant::now();
    let e = ivt.call("Keepalive", Some(json!({"state": 1, "channels": []}))).await.unwrap_err();
    assert!(e.to_string().contains("rule 3"), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(task.await.unwrap().unwrap().rule, Rule::Timeout);
}
