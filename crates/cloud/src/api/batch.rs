//! `POST /api/v1/rpc`: many RPCs in one request, to one device or to many
//! (a setting pushed to a site's cameras, a status read from a fleet).
//!
//! Each call is what `POST /api/v1/devices/{lc}/rpc/{method}` does, with
//! its own status in the answer: the caller's rights, an unknown device or
//! method, an offline device, the device's own error and a timeout fail
//! that call, never the others. One device's calls run one after another in
//! the order given (the seed's order per direction holds, as for separate
//! requests); different devices' calls run at once. In a cluster the calls
//! for devices another node holds cross the bus as one message per node
//! (see `bus`), not one per call: that, and one HTTP exchange for many
//! calls, is what makes a batch cheaper than the calls one by one.

use super::{devices, json_body, Caller};
use crate::error::{ApiError, ApiResult};
use crate::server::Cloud;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The most calls one request carries.
pub(crate) const BATCH_MAX: usize = 1000;
/// The most bytes of device answers one batch answers with; answers past
/// it are replaced by a 502 that says so (each device's is at most 1 MiB,
/// IVR RPC's message cap, so 1,000 of them could otherwise make 1 GiB).
pub(crate) const ANSWERS_MAX: usize = 32 << 20;

/// One call of a batch.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Call {
    /// The device's login code.
    pub(crate) device: String,
    /// An IVT method.
    pub(crate) method: String,
    /// Its params (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) params: Option<Value>,
}

/// How one call ended: the HTTP status the call alone would have had, and
/// its JSON body (the device's answer, or `{"error": …}`).
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) body: bytes::Bytes,
}

impl Outcome {
    pub(crate) fn of(r: ApiResult<ivr_rpc::Resp>) -> Outcome {
        match r {
            Ok(v) => Outcome { status: 200, body: bytes::Bytes::from(v.into_text().into_boxed_bytes()) },
            Err(e) => Outcome::error(e),
        }
    }

    pub(crate) fn error(e: ApiError) -> Outcome {
        Outcome { status: e.status.as_u16(), body: e.body().to_string().into() }
    }
}

/// The calls' indices grouped by device, devices in the order they first
/// appear, each device's calls in theirs.
pub(crate) fn by_device(calls: &[Call]) -> Vec<(&str, Vec<usize>)> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        match at.get(c.device.as_str()) {
            Some(&g) => groups[g].1.push(i),
            None => {
                at.insert(&c.device, groups.len());
                groups.push((&c.device, vec![i]));
            }
        }
    }
    groups
}

/// What is left of a batch's room for answers, taken as they arrive: an
/// answer that does not fit is dropped at once and replaced by a 502 that
/// says so, so a batch never holds more than its room of answers (the
/// call was made; only its answer is lost).
pub(crate) struct Room {
    left: std::sync::atomic::AtomicUsize,
    full: &'static str,
}

impl Room {
    /// `bytes` of answers; `full`: the error of an answer past them.
    pub(crate) fn new(bytes: usize, full: &'static str) -> Room {
        Room { left: bytes.into(), full }
    }

    /// `o`, or the error that replaces it when its answer does not fit.
    pub(crate) fn take(&self, o: Outcome) -> Outcome {
        use std::sync::atomic::Ordering;
        let n = o.body.len();
        match self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)) {
            Ok(_) => o,
            Err(_) => Outcome::error(ApiError::new(StatusCode::BAD_GATEWAY, self.full)),
        }
    }
}

/// Makes one device's calls here, in order: (index, outcome) each.
pub(crate) async fn run_here<S: Store>(
    c: &Arc<Cloud<S>>,
    who: &Caller,
    lc: &str,
    idx: &[usize],
    calls: &[Call],
    room: &Room,
) -> Vec<(usize, Outcome)> {
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let call = &calls[i];
        let o = Outcome::of(devices::call_with(c, who, lc, &call.method, call.params.clone()).await);
        out.push((i, room.take(o)));
    }
    out
}

/// Makes `calls` for `who`, wherever their devices are held: the
/// outcomes in the calls' order.
pub(crate) async fn run<S: Store>(c: &Arc<Cloud<S>>, who: &Caller, calls: &[Call]) -> Vec<Outcome> {
    let groups = by_device(calls);
    let mut out: Vec<Option<Outcome>> = vec![None; calls.len()];
    let mut allowed: Vec<(&str, &[usize])> = Vec::with_capacity(groups.len());
    for (lc, idx) in &groups {
        // A device the caller may not control is refused here, without
        // asking the node that holds it.
        match who.control(lc) {
            Ok(()) => allowed.push((lc, idx)),
            Err(e) => {
                let o = Outcome::error(e);
                for &i in idx {
                    out[i] = Some(o.clone());
                }
            }
        }
    }
    let held = c.holders_of(&allowed.iter().map(|(lc, _)| *lc).collect::<Vec<_>>()).await;
    let mut here: Vec<(&str, &[usize])> = Vec::new();
    let mut elsewhere: HashMap<Arc<str>, Vec<(&str, &[usize])>> = HashMap::new();
    for (lc, idx) in allowed {
        match held.get(lc) {
            Some(node) => elsewhere.entry(node.clone()).or_default().push((lc, idx)),
            None => here.push((lc, idx)),
        }
    }
    let room =
        Room::new(ANSWERS_MAX, "the device answered, but this batch's answers passed 32 MiB: make fewer calls at once");
    let room = &room;
    let local = futures_util::future::join_all(here.iter().map(|(lc, idx)| run_here(c, who, lc, idx, calls, room)));
    let remote = futures_util::future::join_all(elsewhere.into_iter().map(|(node, gs)| async move {
        let got = c.relay_calls(who, node, gs, calls).await;
        got.into_iter().map(|(i, o)| (i, room.take(o))).collect::<Vec<_>>()
    }));
    let (local, remote) = tokio::join!(local, remote);
    for (i, o) in local.into_iter().chain(remote).flatten() {
        out[i] = Some(o);
    }
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::error(ApiError::internal("the call was not made (a bug: please report it)")))
        })
        .collect()
}

/// `POST /api/v1/rpc {"calls": [{"device", "method", "params"}, …]}`:
/// `{"results": [{"device", "method", "status", "answer" | "error", …}, …],
/// "ok", "failed"}`, the results in the calls' order.
pub(crate) async fn rpc<S: Store>(who: Caller, State(c): State<Arc<Cloud<S>>>, body: Bytes) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch<T> {
        calls: Vec<T>,
    }
    // Read straight into calls; only a batch that does not read is read
    // again, call by call, to say which call is wrong.
    let calls = match serde_json::from_slice::<Batch<Call>>(&body) {
        Ok(b) => b.calls,
        Err(_) => {
            let b: Batch<Value> = json_body(&body)?.ok_or_else(|| {
                ApiError::bad_request("body: {\"calls\": [{\"device\", \"method\", \"params\"}, …]} expected")
            })?;
            check_count(b.calls.len())?;
            b.calls
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value::<Call>(v).map_err(|e| ApiError::bad_request(format!("calls[{i}]: {e}")))
                })
                .collect::<ApiResult<Vec<Call>>>()?
        }
    };
    check_count(calls.len())?;
    let outcomes = run(&c, &who, &calls).await;
    Ok(super::json_written(results(&calls, &outcomes)))
}

/// 400 unless a batch has 1 to [`BATCH_MAX`] calls.
fn check_count(n: usize) -> ApiResult<()> {
    if n == 0 || n > BATCH_MAX {
        return Err(ApiError::bad_request(format!("calls: 1 to {BATCH_MAX} in one request, not {n}")));
    }
    Ok(())
}

/// The answer's JSON, written around the devices' answers as they came
/// (never parsed again).
fn results(calls: &[Call], outcomes: &[Outcome]) -> Vec<u8> {
    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let mut out = Vec::with_capacity(64 + outcomes.iter().map(|o| o.body.len() + 96).sum::<usize>());
    out.extend_from_slice(b"{\"results\":[");
    for (n, (call, o)) in calls.iter().zip(outcomes).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        if o.status == 200 && serde_json::from_slice::<serde::de::IgnoredAny>(&o.body).is_ok() {
            // `{"device", "method", "status", "answer"}`, the names as
            // serde_json escapes them, the answer as it came.
            out.extend_from_slice(b"{\"device\":");
            let _ = serde_json::to_writer(&mut out, &call.device);
            out.extend_from_slice(b",\"method\":");
            let _ = serde_json::to_writer(&mut out, &call.method);
            out.extend_from_slice(b",\"status\":200,\"answer\":");
            out.extend_from_slice(&o.body);
            out.push(b'}');
            continue;
        }
        let mut item = serde_json::json!({"device": call.device, "method": call.method, "status": o.status});
        // An error's fields (`error`, and `code`/`msg` of a device's error).
        match serde_json::from_slice::<Value>(&o.body) {
            Ok(Value::Object(fields)) => {
                if let Some(m) = item.as_object_mut() {
                    m.extend(fields);
                }
            }
            _ => item["error"] = Value::String(String::from_utf8_lossy(&o.body).into_owned()),
        }
        if o.status == 200 {
            item["status"] = 502.into();
            item["error"] = "the device's answer is not JSON".into();
        }
        out.extend_from_slice(item.to_string().as_bytes());
    }
    out.extend_from_slice(format!("],\"ok\":{ok},\"failed\":{}}}", outcomes.len() - ok).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(device: &str, method: &str) -> Call {
        Call { device: device.into(), method: method.into(), params: None }
    }

    #[test]
    fn calls_are_grouped_by_device_in_order() {
        let calls = [call("a", "m1"), call("b", "m1"), call("a", "m2"), call("c", "m1"), call("b", "m2")];
        let g = by_device(&calls);
        assert_eq!(g, vec![("a", vec![0, 2]), ("b", vec![1, 4]), ("c", vec![3])]);
    }

    #[test]
    fn answers_past_the_room_say_so() {
        let o = |n: usize| Outcome { status: 200, body: vec![b'1'; n].into() };
        let room = Room::new(10, "full: make fewer calls");
        let got: Vec<Outcome> = [o(6), o(5), o(3), o(2)].into_iter().map(|x| room.take(x)).collect();
        assert_eq!(got.iter().map(|o| o.status).collect::<Vec<_>>(), [200, 502, 200, 502]);
        assert!(String::from_utf8_lossy(&got[1].body).contains("fewer calls"));
        assert_eq!(got[2].body.len(), 3, "an answer that fits is kept whole");
    }

    #[test]
    fn an_answers_head_is_escaped_as_serde_json_escapes_it() {
        let odd = "a\"b\\c\n\u{1}é";
        let calls = [call(odd, odd)];
        let outcomes = [Outcome { status: 200, body: r#"[1, {"x": "y"}]"#.into() }];
        let v: Value = serde_json::from_slice(&results(&calls, &outcomes)).unwrap();
        assert_eq!(
            v["results"][0],
            serde_json::json!({"device": odd, "method": odd, "status": 200, "answer": [1, {"x": "y"}]})
        );
    }

    #[test]
    fn results_carry_answers_as_they_came_and_errors_with_their_fields() {
        let calls = [call("a", "GetNetConfig"), call("b", "GetNetConfig"), call("c", "Reboot")];
        let outcomes = [
            Outcome { status: 200, body: r#"{"ip":"10.0.0.2"}"#.into() },
            Outcome::error(ApiError::conflict("device \"b\" is offline")),
            Outcome::error(ApiError::device("Reboot", 107, "busy")),
        ];
        let v: Value = serde_json::from_slice(&results(&calls, &outcomes)).unwrap();
        assert_eq!(v["ok"], 1);
        assert_eq!(v["failed"], 2);
        assert_eq!(
            v["results"][0],
            serde_json::json!({"device": "a", "method": "GetNetConfig", "status": 200, "answer": {"ip": "10.0.0.2"}})
        );
        assert_eq!(v["results"][1]["status"], 409);
        assert_eq!(v["results"][1]["error"], "device \"b\" is offline");
        assert_eq!(v["results"][2]["status"], 502);
        assert_eq!(v["results"][2]["code"], 107);
    }
}
