//! Cloud recording: sessions the cloud asks devices for, the callback
//! protocol that brings their segments in (docs/ivr-rpc.md), crash-safe
//! storage, the index, listing, playback and retention.
//!
//! A segment is stored as `recordings/<login_code>/<channel>/<day>/
//! <start_ms>-<duration_ms>-<session>-<seq>.ts`: written to a `.part` file,
//! fsynced, renamed, the directory fsynced, then indexed in one
//! transaction. A crash leaves at worst a `.part` file (removed at start)
//! or a file not yet indexed (indexed at start from its name, when its
//! session is known). The edge keeps a segment until the cloud answered
//! its PUT with 2xx, so a segment is either stored or still at the edge.

use crate::error::{ApiError, ApiResult};
use crate::server::{now, token, Cloud};
use crate::store::{EventFilter, HoldRow, RecordSession, SegmentRow, Store, StoreError};
use crate::uploads::Size;
use axum::body::{Body, Bytes as AxBytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use ivr_media::demux::{self, Input};
use ivr_media::hls::{Entry, Playlist};
use ivr_media::sink::{Format, Sink};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest segment the cloud takes.
pub const MAX_SEGMENT: u64 = 512 << 20;
/// An upload URL is good this long.
const UPLOAD_TTL: Duration = Duration::from_secs(600);
/// Segments closer than this are one span.
const JOIN_MS: i64 = 1500;

struct Pending {
    session: RecordSession,
    seq: u64,
    start_ms: i64,
    duration_ms: i64,
    size: u64,
    made: Instant,
}

/// A segment upload claimed by its token: its exact size, and where it is
/// stored (`path`, under the recordings directory as `rel`).
pub(crate) struct SegmentPut {
    p: Pending,
    rel: PathBuf,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
}

/// Counters and upload URLs.
#[derive(Default)]
pub struct Recorder {
    pending: Mutex<HashMap<String, Pending>>,
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub refused: AtomicU64,
    pub disk_errors: AtomicU64,
    pub deleted: AtomicU64,
    pub deleted_bytes: AtomicU64,
    /// Bytes over `--recordings-max-bytes` that holds keep (at the last
    /// sweep).
    pub held_over_quota: AtomicU64,
    /// When each channel's alarm recording may stop (unix s).
    pub(crate) alarm_until: Mutex<HashMap<(String, u32), i64>>,
    /// The size of each playback MP4 asked for with a Range and where its
    /// assembly can resume, by token (a dry run of the assembly found
    /// them); bounded.
    plans: Mutex<HashMap<String, Arc<Plan>>>,
    /// Disk and index were made to agree since this process started
    /// (`reconcile`), so it may write down that they agree.
    pub(crate) reconciled: std::sync::atomic::AtomicBool,
}

/// What a dry run of a playback MP4's assembly learnt: its size, and
/// places where the assembly can start again and write exactly the bytes
/// it would have written there, so a Range from the middle of an hour
/// costs a segment or two, not a pass over everything before it.
pub(crate) struct Plan {
    len: u64,
    marks: Vec<Mark>,
}

/// Before segment `seg` (its index in the range's list), `pos` bytes into
/// the file: the muxer as it was there.
struct Mark {
    seg: usize,
    pos: u64,
    sink: Sink,
}

/// At most this many marks a file (a mark holds a muxer's state and the
/// few audio frames it waits to write, a few hundred bytes).
const MARKS: usize = 256;

/// The body of `POST …/recording`.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    pub quality: Option<String>,
    pub prerecord_seconds: Option<u32>,
    pub seg_duration: Option<u32>,
}

/// A time as the API takes it: RFC 3339 or Unix seconds (fractions allowed).
pub fn parse_time(field: &str, s: &str) -> ApiResult<i64> {
    if let Ok(x) = s.parse::<f64>() {
        if x.is_finite() && (0.0..1e11).contains(&x) {
            return Ok((x * 1000.0).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).map_err(|_| {
        ApiError::bad_request(format!("{field}={s:?}: expected RFC 3339 (2026-11-30T08:00:00Z) or Unix seconds"))
    })
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| "unknown".into(), |t| t.format("%Y-%m-%d").to_string())
}

impl<S: Store> Cloud<S> {
    pub(crate) fn recordings_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("recordings")
    }

    /// Starts a cloud recording of `lc`/`ch` (or answers the one running).
    pub async fn record_start(
        self: &Arc<Self>,
        lc: &str,
        ch: u32,
        req: &RecordRequest,
        reason: &str,
    ) -> ApiResult<RecordSession> {
        self.check_channel(lc, ch).await?;
        let quality = crate::live::LiveRequest::quality_of(req.quality.as_deref())?;
        if let Some(s) = self.running_session(lc, ch).await? {
            return Ok(s);
        }
        let h = self.handle_of(lc).ok_or_else(|| ApiError::conflict(format!("device {lc:?} is offline")))?;
        let session_id: String = token()[..22].to_owned();
        let params = json!({
            "session_id": session_id, "channel": ch, "quality": quality, "max_bitrate": 0,
            "seg_duration": req.seg_duration.unwrap_or(10).clamp(1, 600),
            "seg_max_size": 64 << 20, "seg_max_count": 60,
            "prerecord_seconds": req.prerecord_seconds.unwrap_or(0).min(300),
            "start_ts": 0,
            "cbk_url": format!("{}/record/{session_id}", self.cfg.public_url),
        });
        // Known before the device can call back.
        let s = RecordSession {
            session_id: session_id.clone(),
            login_code: lc.to_owned(),
            channel: ch,
            reason: reason.to_owned(),
            started_at: now(),
            stopped_at: None,
        };
        self.store.add_record_session(&s).await?;
        let r = tokio::time::timeout(self.cfg.rpc_timeout, h.call("StartCloudRecord", Some(params))).await;
        let r = match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ApiError::call("StartCloudRecord", e)),
            Err(_) => Err(ApiError::timeout(format!("StartCloudRecord: no answer from {lc:?}"))),
        };
        if let Err(e) = r {
            self.store.stop_record_session(&session_id, now()).await?;
            self.event(lc, Some(ch), "record_failed", json!({"error": e.msg, "reason": reason})).await;
            return Err(e);
        }
        self.event(lc, Some(ch), "record_start", json!({"session_id": session_id, "reason": reason})).await;
        Ok(s)
    }

    pub(crate) async fn running_session(&self, lc: &str, ch: u32) -> ApiResult<Option<RecordSession>> {
        Ok(self.store.running_record_session(lc, ch).await?)
    }

    /// Stops the channel's running recording; `None` when there was none.
    pub async fn record_stop(self: &Arc<Self>, lc: &str, ch: u32, why: &str) -> ApiResult<Option<RecordSession>> {
        let Some(s) = self.running_session(lc, ch).await? else { return Ok(None) };
        self.store.stop_record_session(&s.session_id, now()).await?;
        if let Some(h) = self.handle_of(lc) {
            let p = json!({"session_id": s.session_id, "channel": ch});
            match tokio::time::timeout(self.cfg.rpc_timeout, h.call("StopCloudRecord", Some(p))).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!(login_code = %crate::limits::shown(lc), channel = ch, error = %e, "cloud: StopCloudRecord failed")
                }
                Err(_) => {
                    tracing::info!(login_code = %crate::limits::shown(lc), channel = ch, "cloud: StopCloudRecord unanswered")
                }
            }
        }
        self.event(lc, Some(ch), "record_stop", json!({"session_id": s.session_id, "reason": why})).await;
        Ok(Some(s))
    }

    /// The callback: a device describes a finished segment; the answer is
    /// where to PUT it.
    async fn segment_announced(&self, session_id: &str, d: &Value) -> ApiResult<Value> {
        let refuse = |msg: String| {
            self.recorder.refused.fetch_add(1, Ordering::Relaxed);
            ApiError::new(axum::http::StatusCode::FORBIDDEN, msg)
        };
        let s = self
            .store
            .record_session(session_id)
            .await?
            .ok_or_else(|| refuse(format!("session {session_id:?}: the cloud did not ask for this recording")))?;
        let field = |k: &str| d.get(k).ok_or_else(|| ApiError::bad_request(format!("{k}: missing")));
        if field("session_id")?.as_str() != Some(session_id) {
            return Err(ApiError::bad_request("session_id: not the session of this URL"));
        }
        if field("channel")?.as_u64() != Some(s.channel as u64) {
            return Err(refuse(format!("channel: session {session_id:?} records channel {}", s.channel)));
        }
        let seq = field("seq")?.as_u64().ok_or_else(|| ApiError::bad_request("seq: a number from 0"))?;
        let size = field("size")?
            .as_u64()
            .filter(|n| (1..=MAX_SEGMENT).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("size: 1 to {MAX_SEGMENT} bytes")))?;
        let duration = field("duration")?
            .as_f64()
            .filter(|d| d.is_finite() && *d > 0.0 && *d <= 3600.0)
            .ok_or_else(|| ApiError::bad_request("duration: seconds, more than 0 and at most 3600"))?;
        let start_ms = match d.get("start_ms").and_then(Value::as_i64) {
            Some(ms) => ms,
            None => field("start_ts")?.as_i64().ok_or_else(|| ApiError::bad_request("start_ts: Unix seconds"))? * 1000,
        };
        if !(946_684_800_000..32_503_680_000_000).contains(&start_ms) {
            return Err(ApiError::bad_request("start_ts: not a time between 2000 and 3000"));
        }
        let t = token();
        let mut p = self.recorder.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, x| x.made.elapsed() < UPLOAD_TTL);
        if p.len() >= 10_000 {
            return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "too many uploads waiting"));
        }
        p.insert(
            t.clone(),
            Pending {
                session: s,
                seq,
                start_ms,
                duration_ms: (duration * 1000.0).round() as i64,
                size,
                made: Instant::now(),
            },
        );
        Ok(json!({"url": format!("{}/record/{session_id}/{seq}/{t}", self.cfg.public_url)}))
    }

    /// The PUT: the bytes to disk (crash-safe), then the index.
    async fn segment_upload(&self, t: &str, body: Body, sock: Option<crate::lowat::ConnSocket>) -> ApiResult<bool> {
        let put = self.claim_segment(t)?;
        let stored = crate::uploads::store_body(body, &put.path, Size::Exactly(put.size), None, false, sock).await;
        let (n, _) = stored.inspect_err(|e| self.count_disk_error(e))?;
        self.index_segment(put, n).await
    }

    /// The upload URL's token taken (a URL is good for one PUT): what the
    /// segment is and where it goes.
    pub(crate) fn claim_segment(&self, t: &str) -> ApiResult<SegmentPut> {
        let p = self
            .recorder
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(t)
            .ok_or_else(|| ApiError::not_found("unknown or used upload URL"))?;
        let s = &p.session;
        let rel = PathBuf::from(crate::safe_name(&s.login_code))
            .join(s.channel.to_string())
            .join(day(p.start_ms))
            .join(format!("{}-{}-{}-{}.ts", p.start_ms, p.duration_ms, s.session_id, p.seq));
        let path = self.recordings_dir().join(&rel);
        Ok(SegmentPut { size: p.size, path, rel, p })
    }

    /// A storing error that is the disk's (not the uploader's) is counted.
    pub(crate) fn count_disk_error(&self, e: &ApiError) {
        if e.status.is_server_error() {
            self.recorder.disk_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The stored segment (`n` bytes, durable at `put.path`) indexed;
    /// whether it is new (an upload repeated after a lost answer is not).
    pub(crate) async fn index_segment(&self, put: SegmentPut, n: u64) -> ApiResult<bool> {
        let (p, rel) = (put.p, put.rel);
        let s = &p.session;
        let row = SegmentRow {
            id: 0,
            login_code: s.login_code.clone(),
            channel: s.channel,
            session_id: s.session_id.clone(),
            seq: p.seq,
            start_ms: p.start_ms,
            duration_ms: p.duration_ms,
            bytes: n,
            path: rel.to_string_lossy().into_owned(),
        };
        let fresh = self.store.add_segment(&row).await?;
        if fresh {
            self.recorder.stored.fetch_add(1, Ordering::Relaxed);
            self.recorder.stored_bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(fresh)
    }

    /// Deletes what retention says must go: segments older than their
    /// channel's `retention_days`, then the oldest of all while the total
    /// is over `--recordings-max-bytes`. Index row first, then the file.
    /// Segments a hold covers stay: when only those are left over the
    /// quota, the excess is counted (`held_over_quota_bytes` in the stats)
    /// and said once, not deleted.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let mut gone = 0u64;
        let policies = self.store.record_policies().await?;
        let now_ms = now() * 1000;
        for (lc, ch, p) in policies {
            let Some(days) = p.get("retention_days").and_then(Value::as_u64).filter(|d| *d > 0) else { continue };
            let before = now_ms - days as i64 * 86_400_000;
            loop {
                let old = self.store.segments_ended_before(&lc, ch, before, 500).await?;
                if old.is_empty() {
                    break;
                }
                let mut any = false;
                for s in old {
                    let d = self.delete_stored(&s).await?;
                    gone += u64::from(d == Deleted::Now);
                    any |= d != Deleted::Held;
                }
                if !any {
                    break; // held since they were listed
                }
            }
        }
        if let Some(max) = self.cfg.recordings_max_bytes {
            loop {
                let (total, _) = self.store.segment_totals().await?;
                if total <= max {
                    break;
                }
                let mut over = total - max;
                let old = self.store.oldest_segments(200).await?;
                if old.is_empty() {
                    let before = self.recorder.held_over_quota.swap(over, Ordering::Relaxed);
                    if before == 0 {
                        tracing::warn!(
                            over_bytes = over,
                            "cloud: recordings are over --recordings-max-bytes, and holds keep all that is \
                             left; release a hold (DELETE …/holds/{{id}}) or raise the quota"
                        );
                    }
                    return Ok(gone);
                }
                let mut any = false;
                for s in old {
                    // Gone either way (another node's sweep may have taken
                    // it): it counts against the excess, or two nodes
                    // sweeping at once would each delete the excess.
                    let d = self.delete_stored(&s).await?;
                    gone += u64::from(d == Deleted::Now);
                    if d != Deleted::Held {
                        any = true;
                        over = over.saturating_sub(s.bytes);
                    }
                    if over == 0 {
                        break;
                    }
                }
                if !any {
                    break; // held since they were listed: the next sweep sees it
                }
            }
        }
        self.recorder.held_over_quota.store(0, Ordering::Relaxed);
        Ok(gone)
    }

    /// Deletes a segment retention (or an erasure) chose, unless a hold
    /// made since covers it: row first, then the file.
    async fn delete_stored(&self, s: &SegmentRow) -> Result<Deleted, StoreError> {
        if !self.store.delete_unheld_segment(s).await? {
            // Held, or another node's sweep took it first (every node
            // sweeps): only the first is still there.
            return Ok(if self.store.segment(s.id).await?.is_some() { Deleted::Held } else { Deleted::Gone });
        }
        let _ = std::fs::remove_file(self.recordings_dir().join(&s.path));
        self.recorder.deleted.fetch_add(1, Ordering::Relaxed);
        self.recorder.deleted_bytes.fetch_add(s.bytes, Ordering::Relaxed);
        Ok(Deleted::Now)
    }
}

/// What became of a segment retention or an erasure chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deleted {
    /// Deleted now, row and file.
    Now,
    /// Deleted already (by another node).
    Gone,
    /// A hold keeps it.
    Held,
}

/// `<start_ms>-<duration_ms>-<session>-<seq>.ts`
pub(crate) fn parse_segment_name(name: &str) -> Option<(i64, i64, String, u64)> {
    let stem = name.strip_suffix(".ts")?;
    let mut it = stem.splitn(3, '-');
    let start = it.next()?.parse().ok()?;
    let dur = it.next()?.parse().ok()?;
    let (session, seq) = it.next()?.rsplit_once('-')?;
    Some((start, dur, session.to_owned(), seq.parse().ok()?))
}

// ---------- HTTP ----------

/// `POST /record/{session_id}`: the callback of StartCloudRecord.
pub(crate) async fn callback<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(session): Path<String>,
    body: AxBytes,
) -> Result<axum::Json<Value>, ApiError> {
    if body.len() > 4096 {
        return Err(ApiError::bad_request("the segment description is at most 4 KiB of JSON"));
    }
    let d: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    Ok(axum::Json(c.segment_announced(&session, &d).await?))
}

/// `PUT /record/{session_id}/{seq}/{token}`: the segment's bytes.
pub(crate) async fn put_segment<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path((_, _, t)): Path<(String, u64, String)>,
    sock: Option<axum::Extension<crate::lowat::ConnSocket>>,
    body: Body,
) -> Result<Response, ApiError> {
    let fresh = c.segment_upload(&t, body, sock.map(|s| s.0)).await?;
    let status = if fresh { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK };
    Ok(status.into_response())
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
}

/// `GET …/recordings?from=&to=`: spans, gaps and events of a time range.
pub(crate) async fn list<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    Query(q): Query<RangeQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    who.see(&lc)?;
    c.check_channel(&lc, ch).await?;
    let to = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?.unwrap_or(now() * 1000 + 60_000);
    let from = q.from.as_deref().map(|t| parse_time("from", t)).transpose()?.unwrap_or(to - 86_400_000);
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let limit = q.limit.unwrap_or(10_000).clamp(1, 100_000);
    let mut segs = c.store.segments(&lc, ch, from, to, limit + 1).await?;
    let more = segs.len() > limit as usize;
    segs.truncate(limit as usize);
    let mut spans: Vec<(i64, i64, u64)> = Vec::new();
    for s in &segs {
        match spans.last_mut() {
            Some(l) if s.start_ms - l.1 <= JOIN_MS => {
                l.1 = l.1.max(s.end_ms());
                l.2 += s.bytes;
            }
            _ => spans.push((s.start_ms, s.end_ms(), s.bytes)),
        }
    }
    let gaps: Vec<Value> = spans.windows(2).map(|w| json!({"from": secs(w[0].1), "to": secs(w[1].0)})).collect();
    let events = c
        .store
        .events(&EventFilter {
            login_code: Some(lc.clone()),
            channel: Some(ch),
            kind: Some("alarm".into()),
            since: Some(from / 1000),
            until: Some(to / 1000),
            limit: Some(1000),
            login_codes: None,
        })
        .await?;
    let holds = c.store.holds(&lc, ch, from, to).await?;
    let mut out = json!({
        "spans": spans.iter().map(|s| json!({"from": secs(s.0), "to": secs(s.1), "bytes": s.2})).collect::<Vec<_>>(),
        "gaps": gaps,
        "events": events,
        "holds": holds.iter().map(hold_json).collect::<Vec<_>>(),
        "segments": segs.len(),
    });
    if more {
        out["next"] = json!(secs(segs.last().map_or(to, SegmentRow::end_ms)));
    }
    Ok(axum::Json(out))
}

/// `DELETE …/recordings?from=&to=` (admins): erases what was recorded
/// in the range, every segment that overlaps it (so a little more than the
/// range at its ends, said in the answer). Refused (409, naming them)
/// while a hold overlaps the range: evidence is released first, on
/// purpose. Row first, then file, as retention deletes.
pub(crate) async fn erase<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    Query(q): Query<RangeQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    who.see(&lc)?;
    who.admin()?;
    c.check_channel(&lc, ch).await?;
    let (Some(from), Some(to)) = (q.from.as_deref(), q.to.as_deref()) else {
        return Err(ApiError::bad_request("from and to are both needed: what to erase is never implied"));
    };
    let (from, to) = (parse_time("from", from)?, parse_time("to", to)?);
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let holds = c.store.holds(&lc, ch, from, to).await?;
    if !holds.is_empty() {
        let ids: Vec<String> = holds.iter().map(|h| h.id.to_string()).collect();
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("holds {} keep part of that range; release them first (DELETE …/holds/{{id}})", ids.join(", ")),
        ));
    }
    let (mut n, mut bytes, mut kept) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let mut after = from;
    loop {
        let segs = c.store.segments(&lc, ch, after, to, 500).await?;
        let Some(end) = segs.last().map(SegmentRow::end_ms) else { break };
        for s in &segs {
            match c.delete_stored(s).await? {
                Deleted::Now => {
                    n += 1;
                    bytes += s.bytes;
                    first = first.min(s.start_ms);
                    last = last.max(s.end_ms());
                }
                Deleted::Held => kept += 1, // held since the check above
                Deleted::Gone => {}
            }
        }
        if segs.len() < 500 || end >= to {
            break;
        }
        after = end;
    }
    c.audit(&who, "recordings_erased", &lc, json!({"channel": ch, "from": secs(from), "to": secs(to), "segments": n}))
        .await;
    let mut out = json!({"segments": n, "bytes": bytes, "kept_by_holds": kept});
    if n > 0 {
        out["from"] = json!(secs(first));
        out["to"] = json!(secs(last));
    }
    Ok(axum::Json(out))
}

/// `POST`/`DELETE …/recording`.
pub(crate) async fn start<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: AxBytes,
) -> Result<(axum::http::StatusCode, axum::Json<Value>), ApiError> {
    who.control(&lc)?;
    let req: RecordRequest = crate::api::json_body(&body)?.unwrap_or_default();
    let s = c.record_start(&lc, ch, &req, "api").await?;
    c.audit(&who, "recording_started", &lc, json!({"channel": ch, "session": s.session_id})).await;
    Ok((axum::http::StatusCode::CREATED, axum::Json(json!(s))))
}

pub(crate) async fn stop<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> Result<axum::Json<Value>, ApiError> {
    who.control(&lc)?;
    c.check_channel(&lc, ch).await?;
    match c.record_stop(&lc, ch, "api").await? {
        Some(s) => {
            c.audit(&who, "recording_stopped", &lc, json!({"channel": ch, "session": s.session_id})).await;
            Ok(axum::Json(json!({"stopped": s.session_id})))
        }
        None => Err(ApiError::not_found(format!("{lc:?} channel {ch} is not being recorded"))),
    }
}

/// A hold as the API shows it (times in Unix seconds, as spans are).
fn hold_json(h: &HoldRow) -> Value {
    json!({
        "id": h.id, "from": secs(h.from_ms), "to": secs(h.to_ms), "note": h.note,
        "created_by": h.created_by, "created_at": h.created_at,
    })
}

/// At most this many holds a channel (each is a condition retention checks).
const MAX_HOLDS: usize = 1000;
/// A hold's note: at most this many characters.
const MAX_NOTE: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    from: Value,
    to: Value,
    #[serde(default)]
    note: String,
}

/// `POST …/holds {from, to, note}`: keeps that range of the channel's
/// recording from retention (days and byte quota) until released.
pub(crate) async fn add_hold<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: AxBytes,
) -> Result<(axum::http::StatusCode, axum::Json<Value>), ApiError> {
    who.control(&lc)?;
    c.check_channel(&lc, ch).await?;
    let r: HoldRequest = crate::api::json_body(&body)?
        .ok_or_else(|| ApiError::bad_request("body: {\"from\", \"to\", \"note\"} expected"))?;
    let (from, to) = (time_value("from", &r.from)?, time_value("to", &r.to)?);
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let note = r.note.trim();
    if note.chars().count() > MAX_NOTE {
        return Err(ApiError::bad_request(format!("note: at most {MAX_NOTE} characters")));
    }
    if note.chars().any(|ch| ch.is_control() && ch != '\n') {
        return Err(ApiError::bad_request("note: control characters other than line breaks are not allowed"));
    }
    if c.store.holds(&lc, ch, 0, i64::MAX).await?.len() >= MAX_HOLDS {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("{lc:?} channel {ch} has {MAX_HOLDS} holds already; release some first"),
        ));
    }
    let mut h = HoldRow {
        id: 0,
        login_code: lc.clone(),
        channel: ch,
        from_ms: from,
        to_ms: to,
        note: note.to_owned(),
        created_by: who.actor.clone(),
        created_at: now(),
    };
    h.id = c.store.add_hold(&h).await?;
    c.audit(&who, "hold_created", &lc, json!({"channel": ch, "hold": h.id, "from": secs(from), "to": secs(to)})).await;
    // What it keeps now (more, if the range reaches into the future).
    let segs = c.store.segments(&lc, ch, from, to, 100_000).await?;
    let mut out = hold_json(&h);
    out["segments"] = json!(segs.len());
    out["bytes"] = json!(segs.iter().map(|s| s.bytes).sum::<u64>());
    Ok((axum::http::StatusCode::CREATED, axum::Json(out)))
}

/// `GET …/holds`: every hold of the channel, oldest range first.
pub(crate) async fn holds<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> Result<axum::Json<Value>, ApiError> {
    who.see(&lc)?;
    c.check_channel(&lc, ch).await?;
    let holds = c.store.holds(&lc, ch, 0, i64::MAX).await?;
    Ok(axum::Json(json!({"holds": holds.iter().map(hold_json).collect::<Vec<_>>()})))
}

/// `DELETE …/holds/{id}`: releases a hold; retention may then delete
/// what it kept (at its next sweep, if the segments are due).
pub(crate) async fn release_hold<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch, id)): Path<(String, u32, i64)>,
) -> Result<axum::Json<Value>, ApiError> {
    who.control(&lc)?;
    c.check_channel(&lc, ch).await?;
    if !c.store.delete_hold(&lc, ch, id).await? {
        return Err(ApiError::not_found(format!("{lc:?} channel {ch} has no hold {id}")));
    }
    c.audit(&who, "hold_released", &lc, json!({"channel": ch, "hold": id})).await;
    Ok(axum::Json(json!({"released": id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackRequest {
    from: Value,
    to: Value,
}

fn time_value(field: &str, v: &Value) -> ApiResult<i64> {
    match v {
        Value::Number(n) => parse_time(field, &n.to_string()),
        Value::String(s) => parse_time(field, s),
        _ => Err(ApiError::bad_request(format!("{field}: RFC 3339 or Unix seconds"))),
    }
}

/// `POST …/playback {from, to}`: URLs of that range with a viewer token.
pub(crate) async fn playback<S: Store>(
    who: crate::api::Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: AxBytes,
) -> Result<axum::Json<Value>, ApiError> {
    who.see(&lc)?;
    let r: PlaybackRequest =
        crate::api::json_body(&body)?.ok_or_else(|| ApiError::bad_request("body: {\"from\", \"to\"} expected"))?;
    let (from, to) = (time_value("from", &r.from)?, time_value("to", &r.to)?);
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    if to - from > 31 * 86_400_000 {
        return Err(ApiError::bad_request("a playback range is at most 31 days"));
    }
    c.check_channel(&lc, ch).await?;
    let segs = c.store.segments(&lc, ch, from, to, 1).await?;
    if segs.is_empty() {
        return Err(ApiError::not_found(format!("nothing recorded of {lc:?} channel {ch} in that range")));
    }
    let exp = now() + c.lives.config().token_ttl.as_secs() as i64;
    let t = c.lives.viewer_token(&lc, ch, &format!("rec:{from}:{to}"), exp);
    let base = format!("{}/recordings/{t}", c.cfg.public_url);
    // The MP4's time 0 (`assemble`'s base): a player adds its current time
    // to this to show the recorded moment.
    let start = segs.first().map_or(from, |s| s.start_ms.max(from));
    Ok(axum::Json(json!({
        "from": secs(from), "to": secs(to), "start": secs(start),
        "urls": {"mp4": format!("{base}/play.mp4"), "hls": format!("{base}/index.m3u8")},
        "expires": exp,
    })))
}

/// What a recording token opens: channel and range.
fn rec_scope<S: Store>(c: &Cloud<S>, t: &str) -> ApiResult<(String, u32, i64, i64)> {
    let (lc, ch, scope) = c.lives.check_token(t).map_err(ApiError::unauthorized)?;
    let mut it = scope.strip_prefix("rec:").ok_or_else(|| ApiError::unauthorized("not a playback token"))?.split(':');
    let from = it.next().and_then(|x| x.parse().ok());
    let to = it.next().and_then(|x| x.parse().ok());
    match (from, to) {
        (Some(f), Some(t)) => Ok((lc, ch, f, t)),
        _ => Err(ApiError::unauthorized("not a playback token")),
    }
}

/// `GET /recordings/{token}/index.m3u8`: a VOD playlist of the stored
/// segments, a discontinuity at each gap.
pub(crate) async fn playback_hls<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path((t, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (lc, ch, from, to) = rec_scope(&c, &t)?;
    if file == "index.m3u8" {
        let segs = c.store.segments(&lc, ch, from, to, 100_000).await?;
        let entries: Vec<Entry> = segs
            .iter()
            .map(|s| Entry {
                uri: format!("{}.ts", s.id),
                duration: s.duration_ms as f64 / 1000.0,
                start_ms: Some(s.start_ms),
                discontinuity: false,
            })
            .collect();
        let p = Playlist::range(None, &entries, from, to).render();
        return Ok(([("content-type", "application/vnd.apple.mpegurl")], p).into_response());
    }
    let id: i64 = file
        .strip_suffix(".ts")
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| ApiError::not_found(format!("{file}: not a segment of this playlist")))?;
    let s = c
        .store
        .segment(id)
        .await?
        .filter(|s| s.login_code == lc && s.channel == ch && s.start_ms < to && s.end_ms() > from)
        .ok_or_else(|| ApiError::not_found(format!("{file}: not a segment of this playlist")))?;
    let b = tokio::fs::read(c.recordings_dir().join(&s.path))
        .await
        .map_err(|e| ApiError::not_found(format!("{file}: {e} (deleted by retention?)")))?;
    Ok(([("content-type", "video/mp2t")], b).into_response())
}

/// `GET /recordings/{token}/play.mp4`: one MP4 of exactly the range,
/// assembled from the stored TS segments as it is sent (fragmented MP4:
/// the first bytes go out once the first segment is read).
/// A `Range: bytes=…` header: the first byte and the last (inclusive) of
/// a file of `len` bytes; `Err(())` when it cannot be satisfied. One
/// range only (a player seeking asks for one).
fn byte_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: answered with the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b && a < len => Ok((a, b.min(len - 1))),
        (Ok(a), Err(_)) if b.is_empty() && a < len => Ok((a, len - 1)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 && len > 0 => Ok((len.saturating_sub(n), len - 1)),
        _ if a.parse::<u64>().is_err() && b.parse::<u64>().is_err() => return None,
        _ => Err(()),
    };
    Some(r)
}

/// `GET /recordings/{token}/play.mp4`: one MP4 of the token's range,
/// assembled from the stored segments as it is sent. With `Range`, the
/// asked bytes (206): the assembly is deterministic, so a dry run gives
/// the size (kept per token) and the range is cut from a second run.
pub(crate) async fn playback_mp4<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(t): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let (lc, ch, from, to) = rec_scope(&c, &t)?;
    let segs = c.store.segments(&lc, ch, from, to, 100_000).await?;
    if segs.is_empty() {
        return Err(ApiError::not_found("nothing recorded in that range (any more)"));
    }
    let dir = c.recordings_dir();
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let known = c.recorder.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&t).cloned();
    let (window, status, extra, plan) = match range {
        None => (
            Window::ALL,
            axum::http::StatusCode::OK,
            known.as_ref().map(|p| vec![("content-length", p.len.to_string())]),
            None,
        ),
        Some(r) => {
            let plan = match known {
                Some(p) => p,
                None => {
                    let mut marks = Vec::new();
                    let len = assemble(&dir, &segs, from, to, Window::ALL, None, Some(&mut marks), None)
                        .await
                        .map_err(|e| ApiError::internal(format!("assembling the MP4: {e}")))?;
                    let plan = Arc::new(Plan { len, marks });
                    let mut m = c.recorder.plans.lock().unwrap_or_else(|e| e.into_inner());
                    if m.len() >= 256 {
                        m.clear();
                    }
                    m.insert(t.clone(), plan.clone());
                    plan
                }
            };
            let len = plan.len;
            match byte_range(&r, len) {
                None => {
                    (Window::ALL, axum::http::StatusCode::OK, Some(vec![("content-length", len.to_string())]), None)
                }
                Some(Err(())) => {
                    let mut resp = ApiError::new(
                        axum::http::StatusCode::RANGE_NOT_SATISFIABLE,
                        format!("range {r:?}: the file has {len} bytes"),
                    )
                    .into_response();
                    if let Ok(v) = format!("bytes */{len}").parse() {
                        resp.headers_mut().insert("content-range", v);
                    }
                    return Ok(resp);
                }
                Some(Ok((a, b))) => (
                    Window { skip: a, take: b - a + 1 },
                    axum::http::StatusCode::PARTIAL_CONTENT,
                    Some(vec![
                        ("content-range", format!("bytes {a}-{b}/{len}")),
                        ("content-length", (b - a + 1).to_string()),
                    ]),
                    Some(plan),
                ),
            }
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<AxBytes, std::io::Error>>(4);
    tokio::spawn(async move {
        // The last mark at or before the window's first byte.
        let resume = plan.as_ref().and_then(|p| p.marks.iter().rev().find(|m| m.pos <= window.skip));
        if let Err(e) = assemble(&dir, &segs, from, to, window, Some(&tx), None, resume).await {
            tracing::warn!(error = %e, "cloud: playback MP4 cut short");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut resp = (status, [("content-type", "video/mp4"), ("accept-ranges", "bytes")], body).into_response();
    for (k, v) in extra.unwrap_or_default() {
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

/// Which bytes of the assembled file to send.
#[derive(Clone, Copy, Debug)]
struct Window {
    skip: u64,
    take: u64,
}

impl Window {
    const ALL: Window = Window { skip: 0, take: u64::MAX };
}

/// Assembles the MP4 of `from..to`; sends the bytes of `win` to `tx`
/// (none without one) and answers how many bytes the whole file has (as
/// far as it was made: it stops once the window is sent). Each segment's
/// last GOP is written when the next segment begins, so that between two
/// segments nothing is held but a little audio: `marks` (when given)
/// collects places to resume there, and `resume` starts at one of them.
#[allow(clippy::too_many_arguments)]
async fn assemble(
    dir: &FsPath,
    segs: &[SegmentRow],
    from: i64,
    to: i64,
    win: Window,
    tx: Option<&tokio::sync::mpsc::Sender<Result<AxBytes, std::io::Error>>>,
    mut marks: Option<&mut Vec<Mark>>,
    resume: Option<&Mark>,
) -> Result<u64, String> {
    let end = win.skip.saturating_add(win.take);
    // Sends the part of `chunk` (at `pos` in the file) inside the window;
    // false once the window is done or the viewer left.
    async fn emit(
        chunk: Vec<u8>,
        pos: &mut u64,
        win: Window,
        end: u64,
        tx: Option<&tokio::sync::mpsc::Sender<Result<AxBytes, std::io::Error>>>,
    ) -> bool {
        let (a, b) = (*pos, *pos + chunk.len() as u64);
        *pos = b;
        let Some(tx) = tx else { return true };
        let (lo, hi) = (a.max(win.skip), b.min(end));
        if lo < hi {
            let part = AxBytes::from(chunk).slice((lo - a) as usize..(hi - a) as usize);
            if tx.send(Ok(part)).await.is_err() {
                return false;
            }
        }
        b < end
    }
    let Some(first_seg) = segs.first() else { return Ok(0) };
    let base = first_seg.start_ms.max(from);
    let every = segs.len().div_ceil(MARKS).max(1);
    let (mut sink, mut pos, start) = match resume {
        Some(m) => (m.sink.checkpoint().ok_or("a resume mark without a muxer state")?, m.pos, m.seg),
        None => (Sink::new(Format::Mp4, 25), 0, 0),
    };
    // A mark is only taken once the file has begun.
    let mut started = resume.is_some();
    let mut out = Vec::new();
    // The next segments are read while this one is muxed: stored segments
    // are written around the page cache, so a playback reads them from the
    // disk, and several reads in flight keep it busy. Reads left when the
    // range ends are cancelled (dropping an `Ahead` aborts its task).
    struct Ahead(tokio::task::JoinHandle<std::io::Result<Vec<u8>>>);
    impl Drop for Ahead {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    const READ_AHEAD: usize = 4;
    let read = |s: &SegmentRow| {
        let path = dir.join(&s.path);
        Ahead(tokio::spawn(async move { tokio::fs::read(path).await }))
    };
    let mut ahead: std::collections::VecDeque<Ahead> = segs.iter().skip(start).take(READ_AHEAD).map(read).collect();
    for (i, s) in segs.iter().enumerate().skip(start) {
        let Some(mut reading) = ahead.pop_front() else { break };
        if let Some(n) = segs.get(i + READ_AHEAD) {
            ahead.push_back(read(n));
        }
        let data =
            (&mut reading.0).await.map_err(|e| format!("{}: {e}", s.path))?.map_err(|e| format!("{}: {e}", s.path))?;
        let d = demux::read(Input::Ts, &data.into(), 25).map_err(|e| format!("{}: {e}", s.path))?;
        let Some(t0) = d.frames.iter().map(|f| f.dts).min() else { continue };
        // One timeline: milliseconds since the file's start.
        let shift = (s.start_ms - base) * 90 - t0 as i64;
        let at = |dts: u64| (dts as i64 + shift).max(0) as u64;
        let frames = d.frames;
        // The keyframe at or before `from` is where the file starts.
        let from_ticks = ((from - s.start_ms) * 90).max(0) as u64 + t0;
        let first = if started {
            0
        } else {
            frames
                .iter()
                .rposition(|f| f.codec.is_video() && f.keyframe && f.dts <= from_ticks)
                .or_else(|| frames.iter().position(|f| f.codec.is_video() && f.keyframe))
                .unwrap_or(frames.len())
        };
        let next_video = frames.iter().skip(first).find(|f| f.codec.is_video());
        let in_range = next_video.is_some_and(|f| s.start_ms + (f.dts - t0) as i64 / 90 < to);
        if started && next_video.is_some() && !in_range {
            break; // the range ends before this segment's pictures
        }
        // The previous segment's last GOP ends where this one's video starts
        // (a resumed assembly did that before its mark).
        if started && in_range && (resume.is_none_or(|m| m.seg != i)) {
            if let Some(f) = next_video {
                sink.cut(at(f.dts), &mut out).map_err(|e| e.to_string())?;
            }
            if !out.is_empty() && !emit(std::mem::take(&mut out), &mut pos, win, end, tx).await {
                return Ok(pos);
            }
            if let Some(marks) = marks.as_deref_mut() {
                if i % every == 0 {
                    if let Some(sink) = sink.checkpoint() {
                        marks.push(Mark { seg: i, pos, sink });
                    }
                }
            }
        }
        for mut f in frames.into_iter().skip(first) {
            let at_ms = s.start_ms + (f.dts - t0) as i64 / 90;
            if at_ms >= to {
                break;
            }
            f.dts = at(f.dts);
            f.pts = at(f.pts);
            started = true;
            sink.push(f, &mut out).map_err(|e| e.to_string())?;
        }
        if !out.is_empty() && !emit(std::mem::take(&mut out), &mut pos, win, end, tx).await {
            return Ok(pos);
        }
    }
    sink.finish(&mut out).map_err(|e| e.to_string())?;
    if !out.is_empty() {
        emit(out, &mut pos, win, end, tx).await;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(byte_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(byte_range("bytes=900-5000", 1000), Some(Ok((900, 999))), "the end is clamped");
        assert_eq!(byte_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(byte_range("bytes=-5000", 1000), Some(Ok((0, 999))));
        assert_eq!(byte_range("bytes=1000-", 1000), Some(Err(())), "past the end: 416");
        assert_eq!(byte_range("bytes=5-2", 1000), Some(Err(())));
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), None, "several: the whole file");
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=x-y", 1000), None);
    }

    #[test]
    fn names_and_times_parse() {
        assert_eq!(
            parse_segment_name("1700000000000-10000-abc_DEF-3.ts"),
            Some((1_700_000_000_000, 10_000, "abc_DEF".into(), 3))
        );
        assert_eq!(parse_segment_name("x.ts"), None);
        assert_eq!(parse_time("from", "1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(parse_time("from", "2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(parse_time("from", "yesterday").unwrap_err().msg.contains("from=\"yesterday\""));
    }
}
