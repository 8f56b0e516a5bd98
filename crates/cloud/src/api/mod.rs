//! The HTTP API under `/api/v1` (every caller checked by `access`), the OpenAPI document,
//! the console routes, and the router that puts every module's handlers
//! together. Every handler answers errors as [`ApiError`].

pub(crate) mod batch;
pub(crate) mod devices;
pub(crate) mod events;
pub(crate) mod firmware;
pub(crate) mod users;

use crate::error::{ApiError, ApiResult};
use crate::server::Cloud;
use crate::store::Store;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use crate::access::{Admin, Caller};

/// A 200 whose body is JSON written already (a device's answer as it
/// came, a batch's results), sent without a tree built and written again.
fn json_written(body: impl Into<axum::body::Body>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// A JSON body: `None` when empty, 400 naming the problem otherwise.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<Option<T>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// Checks that `name` is one of `known` (404 otherwise) and parses the body
/// as its params (absent when the body is empty; 400 when not JSON).
fn api_params(name: &str, known: &[&str], what: &str, body: &[u8]) -> ApiResult<Option<Value>> {
    known_name(name, known, what)?;
    json_body(body)
}

/// 404 unless `name` is one of `known` (an IVT method or event).
fn known_name(name: &str, known: &[&str], what: &str) -> ApiResult<()> {
    if !known.contains(&name) {
        return Err(ApiError::not_found(format!("{name:?} is not an {what}; one of {}", known.join(", "))));
    }
    Ok(())
}

/// `GET /api/v1/nodes`: the cluster's nodes as their heartbeats say (a
/// node is alive while its last heartbeat is within three Keepalive
/// intervals, the window after which its devices are set offline), how
/// many devices each holds online, and the version each runs (with the
/// running nodes' versions under `mixed_versions` while they differ).
/// One node without a bus writes no heartbeat: it lists itself.
async fn nodes<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Value>> {
    let ka = c.cfg.keepalive.as_secs().max(1) as i64;
    let now = crate::server::now();
    let me = &c.cfg.node_id;
    let mut rows = c.store().nodes().await?;
    let online: std::collections::HashMap<String, i64> = c.store().online_by_node().await?.into_iter().collect();
    if !rows.iter().any(|n| n.id == *me) {
        rows.push(crate::store::Node {
            id: me.clone(),
            url: c.cfg.public_url.clone(),
            seen: now,
            version: crate::bus::VERSION.into(),
            bus: crate::bus::PROTOCOL.into(),
        });
        rows.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let alive = |n: &crate::store::Node| n.id == *me || n.seen >= c.dead_before(now);
    let list: Vec<Value> = rows
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "url": n.url,
                "seen": n.seen,
                "alive": alive(n),
                "this": n.id == *me,
                "devices_online": online.get(&n.id).copied().unwrap_or(0),
                "version": n.version,
                "protocol": n.bus,
            })
        })
        .collect();
    // An upgrade under way (or one left half done): the running nodes'
    // versions, when they differ.
    let mut running: Vec<&str> = rows.iter().filter(|n| alive(n)).map(|n| n.version.as_str()).collect();
    running.sort_unstable();
    running.dedup();
    let mixed = (running.len() > 1).then_some(running);
    Ok(Json(json!({
        "node": me, "version": crate::bus::VERSION, "protocol": crate::bus::PROTOCOL,
        "keepalive_secs": ka, "mixed_versions": mixed, "nodes": list,
    })))
}

/// Counts for monitoring and benchmarks: sessions open now, devices, and
/// counters since start.
async fn stats<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Value>> {
    let devices = c.store().device_count().await?;
    let (held_bytes, held_segments) = c.store().held_totals().await?;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let k = &c.counters;
    let active = c.lives.active();
    Ok(Json(json!({
        "devices": devices,
        "sessions": c.sessions(),
        "uptime_secs": c.started.elapsed().as_secs(),
        "logins": n(&k.logins),
        "logins_refused": n(&k.logins_refused),
        "sessions_replaced": n(&k.replaced),
        "sessions_closed_by_rule": n(&k.closed_by_rule),
        "sessions_expired": n(&k.expired),
        "rpc_calls": n(&k.rpc_calls),
        "logins_throttled": n(&k.logins_throttled),
        "alarms_refused": n(&k.alarms_dropped),
        "previews_refused": n(&k.previews_dropped),
        "keepalives_refused": n(&k.keepalives_refused),
        "uploads_refused": n(&k.uploads_refused),
        "credentials": {
            "trusted": c.verified.len(),
            "from_copy": n(&c.verified.from_copy),
            "read": n(&c.verified.read),
        },
        "connections": {
            "open": c.gate.open(),
            "max": c.gate.max(),
            "refused": n(&c.gate.refused),
            "refused_for_api_reserve": n(&c.gate.reserved_refused),
        },
        "cluster": {
            "node": c.cfg.node_id,
            "on_bus": c.bus.get().is_some(),
            "holders_known": c.holders.len(),
            "relayed_out": n(&k.relayed_out),
            "relayed_in": n(&k.relayed_in),
            "relays_misdirected": n(&k.relays_misdirected),
            "holder_reads": n(&k.holder_reads),
        },
        "recordings": {
            "stored": n(&c.recorder.stored),
            "stored_bytes": n(&c.recorder.stored_bytes),
            "uploads_refused": n(&c.recorder.refused),
            "disk_errors": n(&c.recorder.disk_errors),
            "deleted": n(&c.recorder.deleted),
            "deleted_bytes": n(&c.recorder.deleted_bytes),
            "held_bytes": held_bytes,
            "held_segments": held_segments,
            "held_over_quota_bytes": n(&c.recorder.held_over_quota),
        },
        "live": {
            "channels": active.len(),
            "viewers": active.iter().map(|a| a.2).sum::<usize>(),
            "publish_requests": n(&c.lives.publishes),
            "stop_requests": n(&c.lives.stops),
            "publishes_refused": n(&c.lives.refused),
            "starts_failed": n(&c.lives.failures),
            "transcoders": active.iter().filter(|a| a.4).count(),
            "transcodes_started": n(&c.lives.transcodes),
        },
    })))
}

/// The OpenAPI 3 description of this API (written by hand, kept next to
/// the handlers it describes; a test holds the two together).
async fn openapi() -> Response {
    ([("content-type", "application/json")], include_str!("../openapi.json")).into_response()
}

/// `POST …/channels/{channel}/live`: the stream on, and viewer URLs.
async fn start_live<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    who.see(&lc)?;
    let req: crate::live::LiveRequest = json_body(&body)?.unwrap_or_default();
    let q = req.quality()?;
    Ok(Json(c.live_urls(&lc, ch, q).await?))
}

async fn player<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> Response {
    crate::live::live_hls(State(c), Path((t, String::new()))).await
}

/// The whole HTTP service.
pub fn router<S: Store>(c: Arc<Cloud<S>>) -> Router {
    use crate::{gateway, live, policy, recordings, uploads};
    Router::new()
        // The console (web/): every page is the same shell.
        .route("/", get(crate::console::page))
        .route("/login", get(crate::console::page))
        .route("/devices", get(crate::console::page))
        .route("/devices/{login_code}", get(crate::console::page))
        .route("/devices/{login_code}/channels/{channel}", get(crate::console::page))
        .route("/live", get(crate::console::page))
        .route("/events", get(crate::console::page))
        .route("/users", get(crate::console::page))
        .route("/tokens", get(crate::console::page))
        .route("/audit", get(crate::console::page))
        .route("/firmware", get(crate::console::page))
        .route("/ui/{file}", get(crate::console::file))
        .route("/api/openapi.json", get(openapi))
        .route("/ivc", get(gateway::gateway::<S>))
        .route("/api/v1/stream", get(events::stream::<S>))
        .route("/api/v1/stats", get(stats::<S>))
        .route("/api/v1/nodes", get(nodes::<S>))
        .route("/api/v1/login", post(users::login::<S>))
        .route("/api/v1/logout", post(users::logout::<S>))
        .route("/api/v1/me", get(users::me))
        .route("/api/v1/users", post(users::create::<S>).get(users::list::<S>))
        .route("/api/v1/users/{name}", get(users::get::<S>).patch(users::patch::<S>).delete(users::delete::<S>))
        .route("/api/v1/groups", get(users::groups::<S>))
        .route("/api/v1/groups/{name}", put(users::put_group::<S>).delete(users::delete_group::<S>))
        .route("/api/v1/tokens", post(users::create_token::<S>).get(users::tokens::<S>))
        .route("/api/v1/tokens/{id}", axum::routing::delete(users::revoke_token::<S>))
        .route("/api/v1/audit", get(users::audit::<S>))
        .route("/api/v1/devices", post(devices::create::<S>).get(devices::list::<S>))
        .route(
            "/api/v1/devices/{login_code}",
            get(devices::get::<S>).patch(devices::patch::<S>).delete(devices::delete::<S>),
        )
        .route("/api/v1/rpc", post(batch::rpc::<S>))
        .route("/api/v1/devices/{login_code}/rpc/{method}", post(devices::rpc::<S>))
        .route("/api/v1/devices/{login_code}/events/{event}", post(devices::send_event::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/preview", get(devices::preview::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/live", post(start_live::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/detection", get(devices::detection::<S>))
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/recording",
            post(recordings::start::<S>).delete(recordings::stop::<S>),
        )
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/record-policy",
            put(policy::put::<S>).get(policy::get::<S>),
        )
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/recordings",
            get(recordings::list::<S>).delete(recordings::erase::<S>),
        )
        .route("/api/v1/devices/{login_code}/channels/{channel}/playback", post(recordings::playback::<S>))
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/holds",
            post(recordings::add_hold::<S>).get(recordings::holds::<S>),
        )
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/holds/{id}",
            axum::routing::delete(recordings::release_hold::<S>),
        )
        .route("/api/v1/events", get(events::list::<S>))
        .route("/api/v1/events/{id}/picture", get(events::picture::<S>))
        .route(
            "/api/v1/firmware/{hardware_model}/{firmware_model}",
            put(firmware::put::<S>).delete(firmware::delete::<S>),
        )
        .route("/api/v1/firmware", get(firmware::list::<S>))
        .route("/firmware/{token}", get(firmware::download::<S>))
        .route("/upload/{token}", post(uploads::upload::<S>))
        .route("/live/{token}/stream.mp4", get(live::live_mp4::<S>))
        .route("/live/{token}/ws", get(live::live_ws::<S>))
        .route("/live/{token}/{file}", get(live::live_hls::<S>))
        .route("/live/{token}/", get(player::<S>))
        .route("/record/{session}", post(recordings::callback::<S>))
        .route("/record/{session}/{seq}/{token}", put(recordings::put_segment::<S>))
        .route("/recordings/{token}/play.mp4", get(recordings::playback_mp4::<S>))
        .route("/recordings/{token}/{file}", get(recordings::playback_hls::<S>))
        // JSON bodies are small; pictures, firmware and segments are
        // streamed to disk under their own caps, never buffered.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_MAX))
        .layer(axum::middleware::from_fn_with_state(c.clone(), crate::bus::relay::<S>))
        .layer(axum::middleware::from_fn_with_state(c.clone(), api_reserve::<S>))
        .with_state(c)
}

/// The largest JSON body a handler reads.
pub(crate) const JSON_BODY_MAX: usize = 1 << 20;

/// When the connection cap's reserve is in use, only the admin API is
/// served (devices and viewers are told to come back).
async fn api_reserve<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if c.gate.tight() && !req.uri().path().starts_with("/api/") {
        return reserve_refused(&c.gate);
    }
    next.run(req).await
}

/// What a device or viewer is told while the reserve is in use (counted).
pub(crate) fn reserve_refused(gate: &crate::listen::Gate) -> Response {
    gate.reserved_refused.fetch_add(1, Ordering::Relaxed);
    let mut r = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the cloud is at its connection cap; the last places are kept for the admin API",
    )
    .into_response();
    r.headers_mut().insert("retry-after", 5.into());
    r
}
