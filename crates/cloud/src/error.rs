//! One error for every API handler: a status and a message that says what
//! was wrong, as `{"error": "..."}` (plus fields where a caller needs
//! them, such as a device's own error code). Store, device and protocol
//! errors map to statuses here and nowhere else, so handlers use `?`.

use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ivr_rpc::conn::CallError;
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
    /// More fields of the JSON body (e.g. `code` of a device's error).
    pub extra: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError { status, msg: msg.into(), extra: None }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
    pub fn conflict(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, msg)
    }
    pub fn unauthorized(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, msg)
    }
    pub fn timeout(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, msg)
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
    /// An error a device answered with: 502, its code and message.
    pub fn device(method: &str, code: i64, msg: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            msg: format!("{method}: the device answered error {code}: {msg}"),
            extra: Some(json!({"code": code, "msg": msg})),
        }
    }

    /// A failed call to a device: its error (502), a closed session (409).
    pub fn call(method: &str, e: CallError) -> ApiError {
        match e {
            CallError::Remote { err, .. } => ApiError::device(method, err.code, &err.msg),
            e @ CallError::Closed { .. } => ApiError::conflict(format!("{method}: {e}")),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.msg)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match e {
            StoreError::Exists(_) | StoreError::Taken(_) => StatusCode::CONFLICT,
            StoreError::NoDevice(_) => StatusCode::NOT_FOUND,
            StoreError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl ApiError {
    /// The JSON body it is answered with.
    pub fn body(self) -> Value {
        let mut body = json!({"error": self.msg});
        if let (Some(Value::Object(extra)), Value::Object(b)) = (self.extra, &mut body) {
            b.extend(extra);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.body())).into_response()
    }
}
