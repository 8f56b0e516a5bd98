//! Disk and index made to agree at start: a pass after a crash looks only
//! at the day folders changed since the last check (what a crash can have
//! left), a full pass at everything, and each repairs what it looks at.

use ivr_cloud::{Cloud, CloudConfig, RecordSession, SegmentRow, SqlStore, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const LC: &str = "cam.x";
/// `LC` as its folder is named.
const LC_DIR: &str = "cam_2ex";
const OLD_DAY: &str = "2020-01-01";
const NEW_DAY: &str = "2020-01-02";

fn start_ms(day: &str) -> i64 {
    if day == OLD_DAY {
        1_577_836_800_000
    } else {
        1_577_923_200_000
    }
}

/// Sequence numbers are the session's: each day has its own hundred.
fn base(day: &str) -> u64 {
    match day {
        OLD_DAY => 0,
        NEW_DAY => 100,
        _ => 200,
    }
}

/// The segment `seq` of `day` (counted from the day's first), as stored.
fn rel(day: &str, seq: u64) -> String {
    format!("{LC_DIR}/0/{day}/{}-10000-s1-{}.ts", start_ms(day) + seq as i64 * 10_000, base(day) + seq)
}

struct Site {
    dir: PathBuf,
    cloud: Arc<Cloud<SqlStore>>,
}

impl Site {
    fn file(&self, rel: &str) -> PathBuf {
        self.dir.join("recordings").join(rel)
    }

    /// A segment of `day` as a finished upload leaves it: file and row.
    async fn stored(&self, day: &str, seq: u64) {
        self.write(day, seq);
        self.row(day, seq).await;
    }

    fn write(&self, day: &str, seq: u64) {
        let f = self.file(&rel(day, seq));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, vec![0x47; 188]).unwrap();
    }

    async fn row(&self, day: &str, seq: u64) {
        let row = SegmentRow {
            id: 0,
            login_code: LC.into(),
            channel: 0,
            session_id: "s1".into(),
            seq: base(day) + seq,
            start_ms: start_ms(day) + seq as i64 * 10_000,
            duration_ms: 10_000,
            bytes: 188,
            path: rel(day, seq),
        };
        assert!(self.cloud.store().add_segment(&row).await.unwrap());
    }

    /// What a crash leaves in `day`: a half-written file (`seq`), a file
    /// stored but not indexed (`seq + 1`), and a row whose file retention
    /// had just deleted (`seq + 2`).
    async fn crash_leftovers(&self, day: &str, seq: u64) {
        let part = self.file(&format!("{}.part", rel(day, seq)));
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        std::fs::write(part, b"half").unwrap();
        self.write(day, seq + 1);
        self.row(day, seq + 2).await;
    }

    async fn indexed(&self, day: &str) -> Vec<u64> {
        let from = start_ms(day);
        let rows = self.cloud.store().segments(LC, 0, from, from + 86_400_000, 1000).await.unwrap();
        rows.iter().filter(|r| r.path.contains(day)).map(|r| r.seq - base(day)).collect()
    }

    fn files(&self, day: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("recordings").join(LC_DIR).join("0").join(day))
            .map(|rd| rd.flatten().map(|e| e.file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Makes `day`'s folder look last changed two hours ago.
    fn age(&self, day: &str) {
        let d = self.dir.join("recordings").join(LC_DIR).join("0").join(day);
        let then = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::open(d).unwrap().set_modified(then).unwrap();
    }
}

async fn site(name: &str) -> Site {
    let dir = std::env::temp_dir().join(format!("ivr-reconcile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(SqlStore::open(&dir).unwrap());
    let session = RecordSession {
        session_id: "s1".into(),
        login_code: LC.into(),
        channel: 0,
        reason: "api".into(),
        started_at: 1,
        stopped_at: None,
    };
    store.add_record_session(&session).await.unwrap();
    let cfg = CloudConfig::new("t".repeat(32), "http://127.0.0.1:1".into(), dir.clone());
    Site { dir, cloud: Cloud::new(store, cfg) }
}

#[tokio::test]
async fn a_start_after_a_crash_repairs_the_folders_changed_since_the_last_check() {
    let s = site("recent").await;
    for day in [OLD_DAY, NEW_DAY] {
        s.stored(day, 0).await;
        s.crash_leftovers(day, 1).await;
    }
    // No check written down yet: everything is looked at.
    let (rep, seen) = s.cloud.reconcile(false).await.unwrap();
    assert!(seen.full, "{seen:?}");
    assert_eq!((seen.days, seen.days_checked, seen.files), (2, 2, 6), "{seen:?}");
    assert_eq!((rep.indexed, rep.removed_files, rep.removed_rows), (2, 2, 2), "{rep:?}");
    for day in [OLD_DAY, NEW_DAY] {
        assert_eq!(s.indexed(day).await, [0, 2], "{day}: the stored file indexed, the row without a file gone");
        assert_eq!(s.files(day).len(), 2, "{day}: {:?}", s.files(day));
    }

    // A crash later: leftovers in both folders, but the old one was last
    // changed before the check (as months of recordings are).
    for day in [OLD_DAY, NEW_DAY] {
        s.crash_leftovers(day, 10).await;
    }
    s.age(OLD_DAY);
    let (rep, seen) = s.cloud.reconcile(false).await.unwrap();
    assert!(!seen.full);
    assert_eq!((seen.days, seen.days_checked, seen.files, seen.rows), (2, 1, 4, 0), "{seen:?}");
    assert_eq!((rep.indexed, rep.removed_files, rep.removed_rows), (1, 1, 1), "{rep:?}");
    assert_eq!(s.indexed(NEW_DAY).await, [0, 2, 11]);
    assert!(s.files(NEW_DAY).iter().all(|f| f.ends_with(".ts")), "{:?}", s.files(NEW_DAY));
    assert_eq!(s.indexed(OLD_DAY).await, [0, 2, 12], "a folder not changed since the check is not looked into");

    // `--reconcile full`: every folder, and the rows of a folder that is gone.
    s.row("2019-12-31", 7).await;
    let gone = s.cloud.store().segments(LC, 0, 0, i64::MAX / 2, 100).await.unwrap().len();
    let (rep, seen) = s.cloud.reconcile(true).await.unwrap();
    assert!(seen.full);
    assert_eq!((seen.days, seen.days_checked), (2, 2), "{seen:?}");
    assert_eq!(seen.rows, 1, "the row whose folder is not there checked on its own");
    assert_eq!((rep.indexed, rep.removed_files, rep.removed_rows), (1, 1, 2), "{rep:?}");
    assert_eq!(s.indexed(OLD_DAY).await, [0, 2, 11]);
    let left = s.cloud.store().segments(LC, 0, 0, i64::MAX / 2, 100).await.unwrap();
    assert_eq!(left.len(), gone - 2 + 1);
    for r in &left {
        assert!(s.file(&r.path).exists(), "{} indexed without its file", r.path);
    }
    // Agreed: another pass finds nothing.
    let (rep, _) = s.cloud.reconcile(true).await.unwrap();
    assert!(rep.is_empty(), "{rep:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn a_file_already_indexed_under_a_row_the_pass_did_not_list_is_kept() {
    // A segment moved by hand to another day's folder: its row is not
    // among that folder's, and indexing the file again says "not new"
    // (its row, in the old folder, is still there). The file stays; its
    // row goes with the old folder's check, and the next pass indexes it
    // where it is.
    let s = site("kept").await;
    s.stored(NEW_DAY, 0).await;
    let moved = rel(NEW_DAY, 0).replace(NEW_DAY, OLD_DAY);
    std::fs::create_dir_all(s.file(&moved).parent().unwrap()).unwrap();
    std::fs::rename(s.file(&rel(NEW_DAY, 0)), s.file(&moved)).unwrap();
    let (rep, _) = s.cloud.reconcile(false).await.unwrap();
    assert!(s.file(&moved).exists(), "a stored segment is never deleted because its row was not listed");
    assert_eq!((rep.indexed, rep.removed_files, rep.removed_rows), (0, 0, 1), "{rep:?}");
    let (rep, _) = s.cloud.reconcile(true).await.unwrap();
    assert_eq!(rep.indexed, 1, "{rep:?}");
    let rows = s.cloud.store().segments(LC, 0, 0, i64::MAX / 2, 100).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), [moved.as_str()]);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn leftovers_helpers_name_files_as_uploads_do() {
    assert_eq!(rel(NEW_DAY, 1), "cam_2ex/0/2020-01-02/1577923210000-10000-s1-101.ts");
    assert!(Path::new(&rel(OLD_DAY, 0)).starts_with("cam_2ex/0/2020-01-01"));
}
