//! One-time upload URLs handed to devices: alarm pictures and channel
//! previews (POST the JPEG as the body). The token is the authorisation,
//! checked before a byte of the body is read; the body is streamed to disk
//! under a size cap, never held whole in memory.

use crate::diskfile::DiskFile;
use crate::error::{ApiError, ApiResult};
use crate::limits::Upload;
use crate::server::Cloud;
use crate::store::Store;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::Deserialize;
use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The largest picture taken.
pub(crate) const MAX_PICTURE: u64 = 8 << 20;
/// A picture upload must finish within this.
const PICTURE_DEADLINE: Duration = Duration::from_secs(60);

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
    body: Body,
) -> ApiResult<StatusCode> {
    let (lc, target) = c.uploads.take(&t).ok_or_else(|| {
        c.counters.uploads_refused.fetch_add(1, Ordering::Relaxed);
        ApiError::not_found("unknown, used or expired upload URL")
    })?;
    let path = match &target {
        Upload::Alarm { event_id } => c.cfg.data_dir.join("pictures").join(format!("{event_id}.jpg")),
        Upload::Preview => preview_path(&c.cfg.data_dir, &lc, q.channel),
    };
    let stored = tokio::time::timeout(
        PICTURE_DEADLINE,
        store_body(body, &path, Size::AtMost(MAX_PICTURE), Some(is_jpeg), false),
    )
    .await;
    match stored {
        Ok(r) => r.map(|_| StatusCode::NO_CONTENT),
        Err(_) => {
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the picture took over {PICTURE_DEADLINE:?}")))
        }
    }
}

/// Where a channel's latest preview is kept: one file per (device,
/// channel), the name one-to-one with the login code.
pub(crate) fn preview_path(data: &FsPath, login_code: &str, channel: u32) -> std::path::PathBuf {
    data.join("previews").join(format!("{}-{channel}.jpg", crate::safe_name(login_code)))
}

/// A stored picture as a response: `nosniff`, so a browser never runs it
/// as anything but an image.
pub(crate) fn jpeg(b: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "image/jpeg"), ("x-content-type-options", "nosniff"), ("cache-control", "no-store")], b)
        .into_response()
}

/// A JPEG starts with its SOI marker (whatever follows is the viewer's
/// problem; what this keeps out is HTML, SVG and the like).
fn is_jpeg(head: &[u8]) -> Result<(), String> {
    if head.starts_with(&[0xff, 0xd8]) {
        Ok(())
    } else {
        Err("not a JPEG (pictures start with the SOI marker FF D8)".into())
    }
}

/// A check of an upload's first bytes (what the file claims to be).
pub(crate) type HeadCheck = fn(&[u8]) -> Result<(), String>;

/// How large an upload must be.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Size {
    AtMost(u64),
    /// What was announced beforehand (a recording segment).
    Exactly(u64),
}

/// Streams `body` into `path` (through a `.part` file, fsynced with its
/// directory, renamed, so a crash leaves the old file or the new one and at
/// worst a `.part`), its size checked against `size`, the first chunk by
/// `check`. Returns the size and the SHA-256. A full disk is 507.
pub(crate) async fn store_body(
    body: Body,
    path: &FsPath,
    size: Size,
    check: Option<HeadCheck>,
    digest: bool,
) -> ApiResult<(u64, Option<String>)> {
    let max = match size {
        Size::AtMost(m) | Size::Exactly(m) => m,
    };
    let dir = path.parent().unwrap_or(FsPath::new("."));
    let part = path.with_extension("part");
    let disk = |what: &str, e: std::io::Error| {
        let status = if e.raw_os_error() == Some(28) {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        tracing::error!(path = %path.display(), error = %e, "cloud: an upload was not stored ({what})");
        ApiError::new(status, format!("storing the upload ({what}): {e}"))
    };
    tokio::fs::create_dir_all(dir).await.map_err(|e| disk("creating its directory", e))?;
    // The body's small chunks are gathered into 1 MiB direct writes (a
    // trip to a blocking thread each; see diskfile.rs).
    let mut f = DiskFile::new(&part);
    let mut sha = digest.then(|| ring::digest::Context::new(&ring::digest::SHA256));
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    let r: ApiResult<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
            if n == 0 && !chunk.is_empty() {
                if let Some(check) = check {
                    check(&chunk).map_err(|e| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e))?;
                }
            }
            n += chunk.len() as u64;
            if n > max {
                return Err(match size {
                    Size::Exactly(_) => ApiError::bad_request(format!("more bytes than the {max} announced")),
                    Size::AtMost(_) => {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {max} bytes"))
                    }
                });
            }
            if let Some(sha) = sha.as_mut() {
                sha.update(&chunk);
            }
            f.write(&chunk).await.map_err(|e| disk("writing", e))?;
        }
        if n == 0 {
            return Err(ApiError::bad_request("the body is empty"));
        }
        if let Size::Exactly(want) = size {
            if n != want {
                return Err(ApiError::bad_request(format!("{n} bytes, {want} announced")));
            }
        }
        f.finish_as(path).await.map_err(|e| disk("writing, fsync and rename", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    let hex = sha.map(|s| s.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect());
    Ok((n, hex))
}
