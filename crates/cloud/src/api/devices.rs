//! `/api/v1/devices…`: provisioning, RPC and events to a device, previews.

use super::{api_params, Admin};
use crate::error::{ApiError, ApiResult};
use crate::server::{Cloud, ProvisionError};
use crate::store::{Device, Store};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ivr_rpc::catalogue::{IvtEvent, IvtRequest, IVT_EVENTS, IVT_METHODS};
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
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Device>)> {
    let d: NewDevice = crate::api::json_body(&body)?
        .ok_or_else(|| ApiError::bad_request("body: {\"login_code\", \"login_passwd\", \"name\"} expected"))?;
    match c.provision(&d.login_code, &d.login_passwd, &d.name).await {
        Ok(dev) => Ok((StatusCode::CREATED, Json(dev))),
        Err(ProvisionError::Invalid(msg)) => Err(ApiError::bad_request(msg)),
        Err(ProvisionError::Store(e)) => Err(e.into()),
    }
}

pub(crate) async fn list<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(c.store().devices()?))
}

pub(crate) async fn get<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(lc): Path<String>,
) -> ApiResult<Json<Device>> {
    c.store().device(&lc)?.map(Json).ok_or_else(|| ApiError::not_found(format!("no device {lc:?}")))
}

pub(crate) async fn delete<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(lc): Path<String>,
) -> ApiResult<StatusCode> {
    if !c.store().delete_device(&lc)? {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    c.forget_device(&lc).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/rpc/{method}`: any IVT method, its params as the body.
pub(crate) async fn rpc<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, method)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // Sending an unknown method would make the device close the session (rule 4).
    let params = api_params(&method, &IVT_METHODS, "IVT method", &body)?;
    let req = IvtRequest::parse(&method, params.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if c.store().device(&lc)?.is_none() {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    if let Some(ch) = req.channel() {
        c.check_channel_of(&lc, ch, true)?;
    }
    let h = c.handle_of(&lc).ok_or_else(|| ApiError::conflict(format!("device {lc:?} is offline")))?;
    c.counters.rpc_calls.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(c.cfg.rpc_timeout, h.call(&method, params)).await {
        Ok(r) => r.map(Json).map_err(|e| ApiError::call(&method, e)),
        Err(_) => Err(ApiError::timeout(format!("{method}: no answer from {lc:?} within {:?}", c.cfg.rpc_timeout))),
    }
}

/// `POST …/events/{event}`: any IVT event.
pub(crate) async fn send_event<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let params = api_params(&name, &IVT_EVENTS, "IVT event", &body)?;
    let ev = IvtEvent::parse(&name, params.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if c.store().device(&lc)?.is_none() {
        return Err(ApiError::not_found(format!("no device {lc:?}")));
    }
    if let Some(ch) = ev.channel() {
        c.check_channel_of(&lc, ch, true)?;
    }
    match c.handle_of(&lc) {
        Some(h) if h.notify(&name, params).await => Ok((StatusCode::ACCEPTED, Json(json!({"sent": name})))),
        _ => Err(ApiError::conflict(format!("device {lc:?} is offline"))),
    }
}

pub(crate) async fn preview<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> ApiResult<Response> {
    let path = c.cfg.data_dir.join("previews").join(format!("{}-{ch}.jpg", crate::safe_name(&lc)));
    match tokio::fs::read(path).await {
        Ok(b) => Ok(([("content-type", "image/jpeg")], b).into_response()),
        Err(_) => Err(ApiError::not_found(format!("no preview of {lc:?} channel {ch} yet"))),
    }
}
