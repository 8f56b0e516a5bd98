//! The firmware catalogue: images uploaded through the API, offered to
//! devices by GetFirmware, downloaded by devices with an unguessable URL.

use super::Admin;
use crate::error::{ApiError, ApiResult};
use crate::server::{now, token, Cloud};
use crate::store::{Firmware, Store};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest firmware image the catalogue takes.
pub(crate) const MAX_FIRMWARE: usize = 256 << 20;

/// `PUT /api/v1/firmware/{hardware_model}/{firmware_model}`, the image as body.
pub(crate) async fn put<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((hw, fw)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if hw.is_empty() || fw.is_empty() || hw.len() > 128 || fw.len() > 128 {
        return Err(ApiError::bad_request("hardware_model and firmware_model: 1 to 128 bytes"));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the body (the image) is empty"));
    }
    let t = token();
    let dir = c.cfg.data_dir.join("firmware");
    let path = dir.join(format!("{t}.bin"));
    async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, &body).await
    }
    .await
    .map_err(|e| ApiError::internal(format!("storing the image: {e}")))?;
    let f = Firmware {
        hardware_model: hw,
        firmware_model: fw,
        token: t.clone(),
        size: body.len() as u64,
        uploaded_at: now(),
    };
    c.store().add_firmware(&f)?;
    let url = format!("{}/firmware/{t}", c.cfg.public_url);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"hardware_model": f.hardware_model, "firmware_model": f.firmware_model, "size": f.size, "url": url}),
        ),
    ))
}

pub(crate) async fn list<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Vec<Firmware>>> {
    Ok(Json(c.store().firmwares()?))
}

/// `GET /firmware/{token}`: the unguessable token is the authorisation
/// (devices have no admin token).
pub(crate) async fn download<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> ApiResult<Response> {
    let f = c.store().firmware_by_token(&t)?.ok_or_else(|| ApiError::not_found("no such firmware"))?;
    let b = tokio::fs::read(c.cfg.data_dir.join("firmware").join(format!("{}.bin", f.token)))
        .await
        .map_err(|e| ApiError::internal(format!("reading the image: {e}")))?;
    Ok(([("content-type", "application/octet-stream")], b).into_response())
}
