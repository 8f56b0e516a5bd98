//! Disk and index made to agree at start, without a pass over every
//! segment ever stored.
//!
//! What a crash can leave is in the day folders it was writing to: a
//! `.part` file, a file stored but not indexed, a file whose row retention
//! had just deleted. Each of these changed its folder's modification time
//! when it happened (a file created, renamed or removed), and none lasts
//! longer than [`IN_FLIGHT_MAX`] from its first change to its last. So a
//! node writes down, every ten minutes and after each pass, that disk and
//! index agreed then (`<data>/.reconciled-<node>`), and at the next start
//! looks only at the day folders changed since that time minus
//! [`IN_FLIGHT_MAX`]: the folders being recorded to, not the months of
//! recordings behind them. `--reconcile full` (or no mark yet) looks at
//! every folder and every row, a page at a time; that is for a disk or an
//! index restored from a backup, or files changed by hand.

use crate::server::Cloud;
use crate::store::{SegmentRow, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// The longest an upload or a deletion takes from its first change in a
/// day folder to its last (uploads stall out in seconds; a segment is at
/// most an hour).
const IN_FLIGHT_MAX: Duration = Duration::from_secs(3600);
/// A `.part` file untouched this long is a crash's leftover, even while
/// other nodes of a cluster write to the same folders.
const PART_STALE: Duration = Duration::from_secs(600);
/// Rows read at a time when every row is checked.
const PAGE: u32 = 5000;
/// The most segments one channel's day can hold (1 s segments).
const DAY_MAX: u32 = 200_000;

/// What reconciling disk and index found and did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Repair {
    /// Files on disk the index did not have, now indexed.
    pub indexed: u64,
    /// Files removed: half-written (`.part`) or of no known session.
    pub removed_files: u64,
    /// Index rows whose file was gone, removed.
    pub removed_rows: u64,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        *self == Repair::default()
    }
}

/// How much a pass looked at.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Checked {
    /// Every day folder was looked at, and every row (no mark, or asked).
    pub full: bool,
    /// Day folders found, and of those looked into.
    pub days: u64,
    pub days_checked: u64,
    /// Files listed in the folders looked into.
    pub files: u64,
    /// Rows checked on their own (full passes: those of folders not found).
    pub rows: u64,
    pub secs: f64,
}

/// The day folder of a segment's relative path (`lc/ch/day`).
fn folder_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `YYYY-MM-DD` as the Unix milliseconds it covers (UTC).
fn day_range(name: &str) -> Option<(i64, i64)> {
    let d = chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d").ok()?;
    let from = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some((from, from + 86_400_000))
}

/// The sub-folders of `dir` by name (no `stat` a file: the listing's types).
fn folders(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl<S: Store> Cloud<S> {
    fn reconciled_mark(&self) -> PathBuf {
        self.cfg.data_dir.join(format!(".reconciled-{}", crate::safe_name(&self.cfg.node_id)))
    }

    /// When disk and index last agreed, as this node wrote down.
    fn last_reconciled(&self) -> Option<SystemTime> {
        let ms: u64 = std::fs::read_to_string(self.reconciled_mark()).ok()?.trim().parse().ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }

    /// Writes down that disk and index agree now, except for what is in
    /// flight (a node that has not reconciled since it started writes
    /// nothing: it does not know).
    pub(crate) fn mark_reconciled(&self) {
        if !self.recorder.reconciled.load(Ordering::Relaxed) {
            return;
        }
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mark = self.reconciled_mark();
        let tmp = mark.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{ms}\n")).and_then(|()| std::fs::rename(&tmp, &mark));
        if let Err(e) = written {
            tracing::warn!(path = %mark.display(), error = %e, "cloud: cannot write when recordings were last reconciled; the next start looks at every day folder");
        }
    }

    /// Makes disk and index agree (run at start, before serving): the day
    /// folders changed since the last mark, or everything when `full` or
    /// when there is no mark. Says what it repaired and what it looked at.
    pub async fn reconcile(&self, full: bool) -> Result<(Repair, Checked), StoreError> {
        self.reconcile_showing(full, &|_| {}).await
    }

    /// [`Self::reconcile`], telling `progress` what it has looked at after
    /// each day folder (and each page of rows).
    pub async fn reconcile_showing(
        &self,
        full: bool,
        progress: &(dyn Fn(&Checked) + Send + Sync),
    ) -> Result<(Repair, Checked), StoreError> {
        let began = Instant::now();
        let root = self.recordings_dir();
        let since = if full { None } else { self.last_reconciled().map(|t| t - IN_FLIGHT_MAX) };
        let mut rep = Repair::default();
        let mut seen = Checked { full: since.is_none(), ..Checked::default() };
        let mut walked = HashSet::new();
        let mut said = Instant::now();
        for lc in folders(&root) {
            for ch in folders(&root.join(&lc)) {
                for day in folders(&root.join(&lc).join(&ch)) {
                    seen.days += 1;
                    let dir = root.join(&lc).join(&ch).join(&day);
                    if let Some(since) = since {
                        if modified(&dir).is_some_and(|m| m < since) {
                            continue;
                        }
                    }
                    seen.days_checked += 1;
                    self.reconcile_day(&dir, &lc, &ch, &day, &mut rep, &mut seen).await?;
                    if seen.full {
                        // For the rows of folders not found (below).
                        walked.insert(format!("{lc}/{ch}/{day}"));
                    }
                    progress(&seen);
                    if said.elapsed() > Duration::from_secs(5) {
                        said = Instant::now();
                        tracing::info!(
                            days = seen.days_checked,
                            files = seen.files,
                            "cloud: reconciling recordings with the index"
                        );
                    }
                }
            }
        }
        if seen.full {
            // Rows whose folder is not there at all.
            let mut after = 0;
            loop {
                let page = self.store.segment_paths_after(after, PAGE).await?;
                let Some(&(last, _)) = page.last() else { break };
                after = last;
                for (id, rel) in page {
                    if walked.contains(folder_of(&rel)) {
                        continue;
                    }
                    seen.rows += 1;
                    if root.join(&rel).exists() {
                        continue;
                    }
                    if let Some(row) = self.store.segment(id).await? {
                        if self.store.delete_segment(&row).await? {
                            rep.removed_rows += 1;
                        }
                    }
                }
                progress(&seen);
            }
        }
        self.recorder.reconciled.store(true, Ordering::Relaxed);
        self.mark_reconciled();
        seen.secs = began.elapsed().as_secs_f64();
        Ok((rep, seen))
    }

    /// One day folder (`lc`/`ch`/`day` under the recordings): its files and
    /// its rows made to agree.
    async fn reconcile_day(
        &self,
        dir: &Path,
        lc: &str,
        ch: &str,
        day: &str,
        rep: &mut Repair,
        seen: &mut Checked,
    ) -> Result<(), StoreError> {
        let prefix = format!("{lc}/{ch}/{day}/");
        // The rows of this folder: the channel's segments of that day.
        let mut rows: HashMap<String, SegmentRow> = HashMap::new();
        if let (Some(login), Ok(channel), Some((from, to))) =
            (crate::unsafe_name(lc), ch.parse::<u32>(), day_range(day))
        {
            for s in self.store.segments(&login, channel, from, to, DAY_MAX).await? {
                if s.path.starts_with(&prefix) {
                    rows.insert(s.path.clone(), s);
                }
            }
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
        let clustered = self.bus.get().is_some();
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Ok(name) = e.file_name().into_string() else { continue };
            seen.files += 1;
            let path = e.path();
            if name.ends_with(".part") {
                // In a cluster another node may be writing it now.
                let fresh =
                    e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a < PART_STALE));
                if clustered && fresh {
                    continue;
                }
                let _ = std::fs::remove_file(&path);
                rep.removed_files += 1;
                continue;
            }
            let rel = format!("{prefix}{name}");
            if rows.remove(&rel).is_some() {
                continue;
            }
            // A file stored but not indexed (a crash between the two).
            let parsed = crate::recordings::parse_segment_name(&name);
            let owner = match &parsed {
                Some((_, _, session, _)) => self.store.record_session(session).await.ok().flatten(),
                None => None,
            };
            let row = parsed.zip(owner).map(|((start_ms, duration_ms, session, seq), s)| SegmentRow {
                id: 0,
                login_code: s.login_code,
                channel: s.channel,
                session_id: session,
                seq,
                start_ms,
                duration_ms,
                bytes: e.metadata().map(|m| m.len()).unwrap_or(0),
                path: rel,
            });
            match row {
                Some(r) => {
                    // Not new: indexed already (by another node just now,
                    // or under a row this pass did not list): kept.
                    if self.store.add_segment(&r).await? {
                        rep.indexed += 1;
                    }
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                    rep.removed_files += 1;
                }
            }
        }
        // Rows of this folder whose file is gone.
        for (_, row) in rows {
            if self.store.delete_segment(&row).await? {
                rep.removed_rows += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_folders_are_read_as_utc_days() {
        assert_eq!(day_range("2020-01-01"), Some((1_577_836_800_000, 1_577_923_200_000)));
        assert_eq!(day_range("unknown"), None);
        assert_eq!(day_range("2020-13-01"), None);
        assert_eq!(folder_of("cam/0/2020-01-01/1-2-s-3.ts"), "cam/0/2020-01-01");
        assert_eq!(folder_of("x.ts"), "");
    }
}
