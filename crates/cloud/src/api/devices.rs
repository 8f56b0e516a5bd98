//! `/api/v1/devices…`: provisioning, RPC and events to a device, previews.

use super::{api_params, Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::server::{Cloud, ProvisionError};
use crate::store::{Detection, Device, Store};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ivr_rpc::catalogue::{IvtEvent, IvtRequest, IVT_EVENTS, IVT_METHODS};
use ivr_rpc::Resp;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct NewDevice {
    login_code: String,
    login_passwd: String,
    #[serde(default)]
    name: String,
}

pub(crate) async fn create<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Device>)> {
    let d: NewDevice = crate::api::json_body(&body)?
        .ok_or_else(|| ApiError::bad_request("body: {\"login_code\", \"login_passwd\", \"name\"} expected"))?;
    match c.provision(&d.login_code, &d.login_passwd, &d.name).await {
        Ok(dev) => {
            c.audit(&who, "device_created", &dev.login_code, json!({"name": dev.name})).await;
            Ok((StatusCode::CREATED, Json(dev)))
        }
        Err(ProvisionError::Invalid(msg)) => Err(ApiError::bad_request(msg)),
        Err(ProvisionError::Store(e)) => Err(e.into()),
        Err(e @ ProvisionError::Password(_)) => Err(ApiError::internal(e.to_string())),
    }
}

#[derive(Deserialize)]
pub(crate) struct Page {
    /// Devices after this login_code (the `next` link carries it).
    after: Option<String>,
    /// At most this many (default 1,000, at most 10,000).
    limit: Option<u32>,
}

/// `GET /api/v1/devices?after=&limit=`: a page in login_code order; when
/// more follow, a `Link: <…>; rel="next"` header points at the next page.
pub(crate) async fn list<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Query(p): Query<Page>,
) -> ApiResult<Response> {
    let limit = p.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("limit: 1 to 10000"));
    }
    let page = match who.visible() {
        None => c.store().devices(p.after.as_deref(), limit).await?,
        // The caller's own devices, in the same order, a page at a time.
        Some(mine) => {
            let after = p.after.as_deref();
            let rest: Vec<String> = mine.into_iter().filter(|lc| after.is_none_or(|a| lc.as_str() > a)).collect();
            // A grant may name devices deleted since: a batch can come back
            // short, and the next names fill the page.
            let (mut page, mut at) = (Vec::new(), 0);
            while page.len() < limit as usize && at < rest.len() {
                let n = (limit as usize - page.len()).min(rest.len() - at);
                page.extend(c.store().devices_of(&rest[at..at + n]).await?);
                at += n;
            }
            page
        }
    };
    let next = match page.last() {
        Some(last) if page.len() == limit as usize => {
            Some(format!("</api/v1/devices?after={}&limit={limit}>; rel=\"next\"", percent_encode(&last.login_code)))
        }
        _ => None,
    };
    let mut r = Json(page).into_response();
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert("link", v);
    }
    Ok(r)
}

pub(crate) async fn get<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path(lc): Path<String>,
) -> ApiResult<Json<Device>> {
    who.see(&lc)?;
    c.store().device(&lc).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("no device {lc:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DevicePatch {
    name: String,
}

/// `PATCH /api/v1/devices/{login_code} {"name"}`: a new label (operators).
pub(crate) async fn patch<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path(lc): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Device>> {
    who.control(&lc)?;
    let p: DevicePatch =
        crate::api::json_body(&body)?.ok_or_else(|| ApiError::bad_request("body: {\"name\"} expected"))?;
    if !crate::limits::plain_label(&p.name, 128) {
        return Err(ApiError::bad_request("name: at most 128 bytes, no control or bidi characters"));
    }
    if !c.store().rename_device(&lc, &p.name).await? {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    c.audit(&who, "device_renamed", &lc, json!({"name": p.name})).await;
    c.store().device(&lc).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("no device {lc:?}")))
}

pub(crate) async fn delete<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(lc): Path<String>,
) -> ApiResult<StatusCode> {
    if !c.store().delete_device(&lc).await? {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    c.forget_device(&lc).await;
    c.audit(&who, "device_deleted", &lc, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/rpc/{method}`: any IVT method, its params as the body.
pub(crate) async fn rpc<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, method)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let answer = call(&c, &who, &lc, &method, &body).await?;
    Ok(super::json_written(String::from(answer.into_text())))
}

/// An RPC to a device in session here, for `who`: what `POST …/rpc/{method}`
/// does, here or for another node (see `bus`).
pub(crate) async fn call<S: Store>(
    c: &Arc<Cloud<S>>,
    who: &Caller,
    lc: &str,
    method: &str,
    body: &[u8],
) -> ApiResult<Resp> {
    who.control(lc)?;
    // Sending an unknown method would make the device close the session (rule 4).
    let params = api_params(method, &IVT_METHODS, "IVT method", body)?;
    send(c, who, lc, method, params).await
}

/// [`call`] with the params parsed already (a batch's, see `batch`).
pub(crate) async fn call_with<S: Store>(
    c: &Arc<Cloud<S>>,
    who: &Caller,
    lc: &str,
    method: &str,
    params: Option<Value>,
) -> ApiResult<Resp> {
    who.control(lc)?;
    super::known_name(method, &IVT_METHODS, "IVT method")?;
    send(c, who, lc, method, params).await
}

/// The call, once `who` may control `lc` and `method` is an IVT method.
async fn send<S: Store>(
    c: &Arc<Cloud<S>>,
    who: &Caller,
    lc: &str,
    method: &str,
    params: Option<Value>,
) -> ApiResult<Resp> {
    let req = IvtRequest::parse(method, params.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let h = c.session_for(lc, req.channel()).await?;
    c.counters.rpc_calls.fetch_add(1, Ordering::Relaxed);
    if !method.starts_with("Get") {
        c.audit(who, "rpc", lc, json!({"method": method, "params": params})).await;
    }
    // Detection settings cannot be read back from a device: what it
    // accepted is kept, for the console's form and `GET …/detection`.
    let kept = match &req {
        IvtRequest::AlarmMoveDetectConfig(d) => Some(("motion", d.channel, params.clone())),
        IvtRequest::AlarmRectIntrusionDetectConfig(d) => Some(("intrusion", d.channel, params.clone())),
        _ => None,
    };
    let answer = match tokio::time::timeout(c.cfg.rpc_timeout, h.call_raw(method, params)).await {
        Ok(r) => r.map_err(|e| ApiError::call(method, e))?,
        Err(_) => {
            return Err(ApiError::timeout(format!("{method}: no answer from {lc:?} within {:?}", c.cfg.rpc_timeout)))
        }
    };
    if let Some((kind, ch, Some(config))) = kept {
        let d = Detection { kind: kind.into(), config, set_by: who.actor.clone(), set_at: crate::server::now() };
        // The device took them; a database that cannot keep the copy
        // does not make that a failure (the audit log has them too).
        if let Err(e) = c.store().set_detection(lc, ch, &d).await {
            tracing::warn!(error = %e, device = lc, "cloud: applied detection settings not kept");
        }
    }
    Ok(answer)
}

/// `GET …/channels/{channel}/detection`: the motion and intrusion settings
/// last applied through the API (IVR RPC cannot read them from the
/// device), each with who applied them and when; `null` for a kind never
/// applied here.
pub(crate) async fn detection<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> ApiResult<Json<Value>> {
    who.see(&lc)?;
    c.check_channel(&lc, ch).await?;
    let mut out = json!({"motion": null, "intrusion": null});
    for d in c.store().detections(&lc, ch).await? {
        out[d.kind.as_str()] = json!({"config": d.config, "set_by": d.set_by, "set_at": d.set_at});
    }
    Ok(Json(out))
}

/// `POST …/events/{event}`: any IVT event.
pub(crate) async fn send_event<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    who.control(&lc)?;
    let params = api_params(&name, &IVT_EVENTS, "IVT event", &body)?;
    let ev = IvtEvent::parse(&name, params.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let h = c.session_for(&lc, ev.channel()).await?;
    // PTZ moves are not changes; everything else an operator sends is.
    let audited = (name != "CtrlPTZ").then(|| params.clone());
    match h.notify(&name, params).await {
        true => {
            if let Some(params) = audited {
                c.audit(&who, "event_sent", &lc, json!({"event": name, "params": params})).await;
            }
            Ok((StatusCode::ACCEPTED, Json(json!({"sent": name}))))
        }
        false => Err(ApiError::conflict(format!("device {lc:?} is offline"))),
    }
}

pub(crate) async fn preview<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> ApiResult<Response> {
    who.see(&lc)?;
    if c.store().device(&lc).await?.is_none() {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    let path = crate::uploads::preview_path(&c.cfg.data_dir, &lc, ch);
    match tokio::fs::read(path).await {
        Ok(b) => Ok(crate::uploads::jpeg(b)),
        Err(_) => Err(ApiError::not_found(format!("no preview of {lc:?} channel {ch} yet"))),
    }
}

/// `s` for a URL's query or path segment: unreserved characters kept,
/// every other byte as `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
