//! `/api/v1/events…`: the event list, alarm pictures, and the live feed as
//! server-sent events.

use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::server::Cloud;
use crate::store::{Event, EventFilter, Store};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Deserialize)]
pub(crate) struct EventQuery {
    login_code: Option<String>,
    channel: Option<u32>,
    #[serde(rename = "type")]
    kind: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
}

pub(crate) async fn list<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    if let Some(lc) = &q.login_code {
        who.see(lc)?;
    }
    let f = EventFilter {
        login_code: q.login_code,
        channel: q.channel,
        kind: q.kind,
        since: q.since,
        until: q.until,
        limit: q.limit,
        login_codes: who.visible(),
    };
    Ok(Json(c.store().events(&f).await?))
}

pub(crate) async fn picture<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    // Another device's picture is as absent as a picture never taken.
    if !c.store().event(id).await?.is_some_and(|e| who.may_see(&e.login_code)) {
        return Err(ApiError::not_found(format!("no picture for event {id}")));
    }
    match tokio::fs::read(c.cfg.data_dir.join("pictures").join(format!("{id}.jpg"))).await {
        Ok(b) => Ok(crate::uploads::jpeg(b)),
        Err(_) => Err(ApiError::not_found(format!("no picture for event {id}"))),
    }
}

/// How often an open event stream checks its caller again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Server-sent events: every stored event as it happens (`event: <kind>`,
/// `data: <event JSON>`), of the caller's devices. Every few seconds the
/// caller is checked again: a logout, a revoked token or a deleted user
/// ends the stream, and a changed grant applies to it.
pub(crate) async fn stream<S: Store>(who: Caller, State(c): State<Arc<Cloud<S>>>) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let mut rx = c.subscribe();
    let s = async_stream(move |tx| async move {
        let mut who = who;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                _ = recheck.tick() => {
                    match c.refresh(&who).await {
                        Ok(now) => who = now,
                        Err(e) => {
                            let end = SseEvent::default().event("end").data(e.msg);
                            let _ = tx.send(Ok::<_, std::convert::Infallible>(end)).await;
                            return;
                        }
                    }
                    continue;
                }
            };
            match got {
                Ok(e) if !who.may_see(&e.login_code) => {}
                Ok(e) => {
                    let ev =
                        SseEvent::default().event(e.kind.clone()).data(serde_json::to_string(&e).unwrap_or_default());
                    if tx.send(Ok::<_, std::convert::Infallible>(ev)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "cloud: SSE client too slow"),
                Err(_) => return,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// A stream fed by a task (no extra crate for one use).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
