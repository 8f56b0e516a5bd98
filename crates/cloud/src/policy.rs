//! Record policies: what the cloud keeps true by itself for a channel —
//! recording always, on a weekly schedule (in the site's time zone), or
//! around alarms — across
//! device reconnects and cloud restarts, and how long to keep it.

use crate::api::Caller;
use crate::error::{ApiError, ApiResult};
use crate::recordings::RecordRequest;
use crate::server::{now, Cloud};
use crate::store::Store;
use axum::body::Bytes as AxBytes;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{Datelike, Timelike};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Continuous,
    Alarm,
    Schedule,
}

/// A weekly window: ISO days (1 Monday … 7 Sunday), `HH:MM` on the clock
/// of the policy's `timezone`; `to` before `from` runs past midnight.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Vec<u8>,
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordPolicy {
    pub mode: Mode,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub prerecord_seconds: u32,
    /// Alarm mode: keep recording this long after the last alarm.
    #[serde(default = "default_post")]
    pub post_seconds: u32,
    #[serde(default)]
    pub schedule: Vec<Window>,
    /// The time zone the schedule's days and times are read in: a name
    /// from the IANA database (`Europe/Paris`); absent: UTC. Summer time
    /// follows the zone's rules (a window 08:00–18:00 stays 08:00–18:00 on
    /// the wall clock all year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Delete this channel's segments older than this (0/absent: only
    /// the global byte limit applies).
    #[serde(default)]
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub seg_duration: Option<u32>,
}

fn default_post() -> u32 {
    30
}

fn minutes(field: &str, s: &str) -> ApiResult<u32> {
    let bad = || ApiError::bad_request(format!("{field}: {s:?} is not HH:MM"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A time zone by its IANA name.
fn zone(name: &str) -> ApiResult<chrono_tz::Tz> {
    name.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "timezone: {name:?} is not a time zone name from the IANA database (such as \"Europe/Paris\", \"America/New_York\" or \"UTC\")"
        ))
    })
}

impl RecordPolicy {
    pub fn check(&self) -> ApiResult<()> {
        if let Some(tz) = &self.timezone {
            zone(tz)?;
        }
        crate::live::LiveRequest::quality_of(self.quality.as_deref())?;
        if self.prerecord_seconds > 300 {
            return Err(ApiError::bad_request("prerecord_seconds: at most 300"));
        }
        if self.post_seconds > 3600 {
            return Err(ApiError::bad_request("post_seconds: at most 3600"));
        }
        if self.mode == Mode::Schedule && self.schedule.is_empty() {
            return Err(ApiError::bad_request("schedule: mode \"schedule\" needs at least one window"));
        }
        for (i, w) in self.schedule.iter().enumerate() {
            if w.days.is_empty() || w.days.iter().any(|d| !(1..=7).contains(d)) {
                return Err(ApiError::bad_request(format!("schedule[{i}].days: 1 (Monday) to 7 (Sunday)")));
            }
            let (f, t) =
                (minutes(&format!("schedule[{i}].from"), &w.from)?, minutes(&format!("schedule[{i}].to"), &w.to)?);
            if f == t {
                return Err(ApiError::bad_request(format!("schedule[{i}]: from and to are the same time")));
            }
        }
        Ok(())
    }

    /// Whether the schedule covers Unix second `t`, read on the clock of
    /// the policy's time zone.
    pub fn scheduled(&self, t: i64) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp(t, 0) else { return false };
        let tz = match self.timezone.as_deref().map(zone) {
            None => chrono_tz::UTC,
            Some(Ok(tz)) => tz,
            // Checked when the policy was set; a name a later tz database
            // dropped records nothing rather than at the wrong hours.
            Some(Err(_)) => return false,
        };
        let dt = utc.with_timezone(&tz);
        let day = dt.weekday().number_from_monday() as u8;
        let prev = if day == 1 { 7 } else { day - 1 };
        let m = dt.hour() * 60 + dt.minute();
        self.schedule.iter().any(|w| {
            let (Ok(f), Ok(to)) = (minutes("", &w.from), minutes("", &w.to)) else { return false };
            if f < to {
                w.days.contains(&day) && m >= f && m < to
            } else {
                (w.days.contains(&day) && m >= f) || (w.days.contains(&prev) && m < to)
            }
        })
    }
}

/// Channels whose start or stop is under way (one at a time each).
#[derive(Default)]
pub struct Keeper {
    busy: Mutex<HashSet<(String, u32)>>,
}

impl<S: Store> Cloud<S> {
    async fn policy_of(&self, lc: &str, ch: u32) -> Option<RecordPolicy> {
        serde_json::from_value(self.store.record_policy(lc, ch).await.ok()??).ok()
    }

    /// An alarm of `lc`/`ch` started or ended: an alarm policy records
    /// until `post_seconds` after the last one.
    pub(crate) async fn policy_alarm(&self, lc: &str, ch: u32, start: bool) {
        let Some(p) = self.policy_of(lc, ch).await.filter(|p| p.mode == Mode::Alarm) else { return };
        // An alarm whose end never comes still ends: five minutes on.
        let until = now() + p.post_seconds as i64 + if start { 300 } else { 0 };
        self.recorder.alarm_until.lock().unwrap_or_else(|e| e.into_inner()).insert((lc.to_owned(), ch), until);
    }

    /// Starts and stops recordings so that every policy of the devices
    /// this node holds is kept. Run it every few seconds (on every node:
    /// each reads only its own devices' policies).
    pub async fn keep_policies(self: &Arc<Self>) {
        let Ok(all) = self.store.record_policies_held(&self.cfg.node_id).await else { return };
        let t = now();
        for (lc, ch, v) in all {
            let Ok(p) = serde_json::from_value::<RecordPolicy>(v) else { continue };
            if self.handle_of(&lc).is_none() {
                continue;
            }
            let want = match p.mode {
                Mode::Off => false,
                Mode::Continuous => true,
                Mode::Schedule => p.scheduled(t),
                Mode::Alarm => self
                    .recorder
                    .alarm_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(lc.clone(), ch))
                    .is_some_and(|u| *u > t),
            };
            let Ok(running) = self.running_session(&lc, ch).await else { continue };
            // The device lost the recording (restarted, reconnected
            // without it): its Keepalive names another session or none.
            let reported = match &running {
                Some(_) => self
                    .store
                    .device(&lc)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.channels.into_iter().find(|c| c.channel == ch))
                    .map(|c| c.record_session),
                None => None,
            };
            let lost = running.as_ref().is_some_and(|s| {
                let settle = (self.cfg.keepalive.as_secs() as i64 * 3).max(5);
                t - s.started_at > settle && reported.is_some_and(|r| r.as_deref() != Some(s.session_id.as_str()))
            });
            let action = match (want, &running) {
                (true, None) => Some(true),
                (true, Some(_)) if lost => Some(true),
                (false, Some(s)) if s.reason != "api" => Some(false),
                _ => None,
            };
            let Some(start) = action else { continue };
            let key = (lc.clone(), ch);
            if !self.keeper.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
                continue;
            }
            let c = self.clone();
            let mode =
                serde_json::to_value(p.mode).ok().and_then(|m| m.as_str().map(str::to_owned)).unwrap_or_default();
            tokio::spawn(async move {
                let r = if start {
                    if lost {
                        if let Some(s) = &running {
                            let _ = c.store.stop_record_session(&s.session_id, now()).await;
                            c.event(&lc, Some(ch), "record_lost", json!({"session_id": s.session_id})).await;
                        }
                    }
                    let req = RecordRequest {
                        quality: p.quality.clone(),
                        prerecord_seconds: Some(p.prerecord_seconds),
                        seg_duration: p.seg_duration,
                    };
                    c.record_start(&lc, ch, &req, &mode).await.map(|_| ())
                } else {
                    c.record_stop(&lc, ch, &format!("policy {mode}")).await.map(|_| ())
                };
                if let Err(e) = r {
                    tracing::info!(login_code = %crate::limits::shown(&lc), channel = ch, error = %e, "cloud: record policy not applied yet");
                }
                c.keeper.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            });
        }
    }
}

/// `PUT …/record-policy`.
pub(crate) async fn put<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: AxBytes,
) -> Result<Json<Value>, ApiError> {
    who.control(&lc)?;
    let p: RecordPolicy =
        crate::api::json_body(&body)?.ok_or_else(|| ApiError::bad_request("body: a record policy expected"))?;
    p.check()?;
    c.check_channel(&lc, ch).await?;
    let v = serde_json::to_value(&p).map_err(|e| ApiError::internal(e.to_string()))?;
    c.store.set_record_policy(&lc, ch, &v).await?;
    c.audit(&who, "record_policy_set", &lc, json!({"channel": ch, "policy": v})).await;
    c.event(&lc, Some(ch), "record_policy", v.clone()).await;
    c.keep_policies().await;
    Ok(Json(v))
}

/// `GET …/record-policy` (mode off when none was set).
pub(crate) async fn get<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
) -> Result<Json<Value>, ApiError> {
    who.see(&lc)?;
    c.check_channel(&lc, ch).await?;
    Ok(Json(match c.policy_of(&lc, ch).await {
        Some(p) => serde_json::to_value(p).map_err(|e| ApiError::internal(e.to_string()))?,
        None => json!({"mode": "off"}),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hold_on_their_days_and_across_midnight() {
        let p: RecordPolicy = serde_json::from_value(json!({
            "mode": "schedule",
            "schedule": [{"days": [1, 2, 3, 4, 5], "from": "08:00", "to": "18:00"}, {"days": [6], "from": "22:00", "to": "06:00"}]
        }))
        .unwrap();
        p.check().unwrap();
        // 2026-11-30 is a Monday.
        let mon = chrono::DateTime::parse_from_rfc3339("2026-11-30T09:30:00Z").unwrap().timestamp();
        assert!(p.scheduled(mon));
        assert!(!p.scheduled(mon + 10 * 3600));
        let sat_night = chrono::DateTime::parse_from_rfc3339("2026-12-05T23:00:00Z").unwrap().timestamp();
        assert!(p.scheduled(sat_night));
        assert!(p.scheduled(sat_night + 4 * 3600)); // Sunday 03:00
        assert!(!p.scheduled(sat_night + 8 * 3600));
        let bad: RecordPolicy =
            serde_json::from_value(json!({"mode": "schedule", "schedule": [{"days": [8], "from": "8", "to": "9:00"}]}))
                .unwrap();
        assert!(bad.check().unwrap_err().msg.contains("schedule[0].days"));
    }

    /// A schedule in a time zone holds on that zone's wall clock, summer
    /// and winter; a name outside the IANA database is refused by name.
    #[test]
    fn schedules_read_in_their_time_zone_follow_its_summer_time() {
        let p: RecordPolicy = serde_json::from_value(json!({
            "mode": "schedule", "timezone": "Europe/Paris",
            "schedule": [{"days": [1], "from": "08:00", "to": "18:00"}]
        }))
        .unwrap();
        p.check().unwrap();
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
        // Monday 2026-11-30, winter: Paris is UTC+1.
        assert!(!p.scheduled(at("2026-11-30T06:30:00Z")), "07:30 in Paris");
        assert!(p.scheduled(at("2026-11-30T07:30:00Z")), "08:30 in Paris");
        assert!(p.scheduled(at("2026-11-30T16:30:00Z")), "17:30 in Paris");
        assert!(!p.scheduled(at("2026-11-30T17:30:00Z")), "18:30 in Paris");
        // Monday 2026-07-06, summer: UTC+2.
        assert!(p.scheduled(at("2026-07-06T06:30:00Z")), "08:30 in Paris in July");
        assert!(!p.scheduled(at("2026-07-06T16:30:00Z")), "18:30 in Paris in July");
        // The day is the zone's too: Sunday 23:30 UTC is Monday 08:30 in
        // Tokyo, and Monday 04:30 UTC still Sunday 23:30 in New York.
        let tokyo: RecordPolicy = serde_json::from_value(json!({
            "mode": "schedule", "timezone": "Asia/Tokyo",
            "schedule": [{"days": [1], "from": "00:00", "to": "12:00"}]
        }))
        .unwrap();
        assert!(tokyo.scheduled(at("2026-11-29T23:30:00Z")));
        let ny = RecordPolicy { timezone: Some("America/New_York".into()), ..tokyo.clone() };
        assert!(!ny.scheduled(at("2026-11-30T04:30:00Z")), "Sunday 23:30 in New York");
        assert!(ny.scheduled(at("2026-11-30T05:30:00Z")), "Monday 00:30 in New York");
        let bad = RecordPolicy { timezone: Some("Mars/Olympus_Mons".into()), ..tokyo };
        let e = bad.check().unwrap_err();
        assert!(e.msg.contains("timezone") && e.msg.contains("Mars/Olympus_Mons"), "{}", e.msg);
        assert!(!bad.scheduled(at("2026-11-30T01:00:00Z")), "an unknown zone records nothing");
    }
}
