//! The firmware catalogue: images uploaded through the API, offered to
//! devices by GetFirmware, downloaded by devices with an unguessable URL.

use super::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::server::{now, token, Cloud};
use crate::store::{Firmware, Store};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// The largest firmware image the catalogue takes.
pub(crate) const MAX_FIRMWARE: u64 = 256 << 20;

/// `PUT /api/v1/firmware/{hardware_model}/{firmware_model}`, the image as
/// body, streamed to disk (never whole in memory) with its SHA-256.
pub(crate) async fn put<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((hw, fw)): Path<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    for (what, v) in [("hardware_model", &hw), ("firmware_model", &fw)] {
        if v.is_empty() || !crate::limits::plain_label(v, 128) {
            return Err(ApiError::bad_request(format!("{what}: 1 to 128 bytes, no control or bidi characters")));
        }
    }
    let t = token();
    let path = image_path(&c, &t);
    let (size, sha256) =
        crate::uploads::store_body(body, &path, crate::uploads::Size::AtMost(MAX_FIRMWARE), None, true, None).await?;
    let f = Firmware { hardware_model: hw, firmware_model: fw, token: t.clone(), size, uploaded_at: now(), sha256 };
    let replaced = match c.store().add_firmware(&f).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
    };
    if let Some(old) = replaced {
        // The replaced image: no URL reaches it any more.
        if let Err(e) = tokio::fs::remove_file(image_path(&c, &old)).await {
            tracing::warn!(error = %e, "cloud: the replaced firmware image was not deleted");
        }
    }
    let url = format!("{}/firmware/{t}", c.cfg.public_url);
    c.audit(&who, "firmware_uploaded", &f.hardware_model, json!({"firmware_model": f.firmware_model, "size": f.size}))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hardware_model": f.hardware_model, "firmware_model": f.firmware_model, "size": f.size,
                    "sha256": f.sha256, "url": url})),
    ))
}

/// `DELETE /api/v1/firmware/{hardware_model}/{firmware_model}` (admins):
/// the image leaves the catalogue (GetFirmware offers the newest one left)
/// and its file is deleted; a download already under way ends with it.
pub(crate) async fn delete<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((hw, fw)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let Some(t) = c.store().delete_firmware(&hw, &fw).await? else {
        return Err(ApiError::not_found(format!("no firmware {fw:?} for hardware model {hw:?} in the catalogue")));
    };
    if let Err(e) = tokio::fs::remove_file(image_path(&c, &t)).await {
        tracing::warn!(error = %e, "cloud: the deleted firmware image's file was not removed");
    }
    c.audit(&who, "firmware_deleted", &hw, json!({"firmware_model": fw})).await;
    Ok(StatusCode::NO_CONTENT)
}

fn image_path<S: Store>(c: &Cloud<S>, token: &str) -> std::path::PathBuf {
    c.cfg.data_dir.join("firmware").join(format!("{token}.bin"))
}

pub(crate) async fn list<S: Store>(_: Caller, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Vec<Firmware>>> {
    Ok(Json(c.store().firmwares().await?))
}

/// `GET /firmware/{token}`: the unguessable token is the authorisation
/// (devices have no admin token). Streamed from disk in 64 KiB reads.
pub(crate) async fn download<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> ApiResult<Response> {
    let f = c.store().firmware_by_token(&t).await?.ok_or_else(|| ApiError::not_found("no such firmware"))?;
    let file = tokio::fs::File::open(image_path(&c, &f.token))
        .await
        .map_err(|e| ApiError::internal(format!("reading the image: {e}")))?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut r = Body::from_stream(chunks).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/octet-stream"));
    h.insert("content-length", HeaderValue::from(f.size));
    if let Some(sha) = f.sha256.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("x-content-sha256", sha);
    }
    Ok(r)
}
