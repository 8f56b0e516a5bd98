//! One-time upload URLs handed to devices: alarm pictures and channel
//! previews (POST the JPEG as the body). The token is the authorisation.

use crate::error::{ApiError, ApiResult};
use crate::server::{Cloud, Upload};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

/// The largest picture taken.
const MAX_PICTURE: usize = 8 << 20;

#[derive(Deserialize)]
pub(crate) struct UploadQuery {
    /// Which channel a preview shows (ivr's addition; the seed's URL is per device).
    #[serde(default)]
    channel: u32,
}

/// `POST /upload/{token}`.
pub(crate) async fn upload<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(t): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let target = c.take_upload(&t).ok_or_else(|| ApiError::not_found("unknown or used upload URL"))?;
    if body.len() > MAX_PICTURE {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "pictures are at most 8 MiB"));
    }
    let (dir, name) = match &target {
        Upload::Alarm { event_id } => ("pictures", format!("{event_id}.jpg")),
        Upload::Preview { login_code } => ("previews", format!("{}-{}.jpg", crate::safe_name(login_code), q.channel)),
    };
    let dir = c.cfg.data_dir.join(dir);
    let path = dir.join(name);
    async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, &body).await
    }
    .await
    .map_err(|e| ApiError::internal(format!("storing the picture: {e}")))?;
    Ok(StatusCode::NO_CONTENT)
}
