//! The cloud's state: devices (with argon2-hashed passwords), their
//! channels, events (state changes and alarms), firmware, recordings and
//! (in `accounts`) people. One [`SqlStore`] over either database
//! (`crate::sql`): SQLite in the data directory by default, PostgreSQL for
//! a cluster (`--store postgres://…`); numbered migrations, the same list
//! for both.
//!
//! What changes on every Keepalive is kept in memory: `last_seen` is
//! written in batches ([`Store::flush_seen`], one statement per second of
//! timestamps), and a channel row is written only when it changed, checked
//! against the rows this node last wrote. A device's rows are fenced by its
//! session `epoch`: a write of a session that another login (on any node)
//! has replaced changes nothing, and says so.

use crate::sql::{args, AnyDb, Backend, Row, Sqlite, Stmt, Val};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a device with login_code {0:?} exists already")]
    Exists(String),
    #[error("no device with login_code {0:?}")]
    NoDevice(String),
    /// A name (user, token) that exists already; the message names it.
    #[error("{0}")]
    Taken(String),
    #[error("database: {0}")]
    Db(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A channel's last reported state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    pub channel: u32,
    /// 0 offline, 1 online, 2 live.
    pub state: u8,
    pub record_session: Option<String>,
    pub alarm: u32,
    /// Unix seconds of the last change.
    pub changed_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    pub login_code: String,
    pub name: String,
    pub online: bool,
    pub hardware_model: Option<String>,
    pub firmware_model: Option<String>,
    /// Unix seconds of the last Keepalive or login.
    pub last_seen: Option<i64>,
    pub created_at: i64,
    pub channels: Vec<ChannelRow>,
    /// The cloud node holding its session (a cluster's `--node-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A cloud node of a cluster, as its heartbeat last said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    /// Its `--public-url`.
    pub url: String,
    /// Unix seconds of its last heartbeat.
    pub seen: i64,
    /// The ivr version it runs ("" for a node older than this column).
    pub version: String,
    /// The cluster protocol it speaks on the bus (0: before it was said).
    pub bus: i64,
}

/// An event: a state change or an alarm.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub login_code: String,
    pub channel: Option<u32>,
    /// `online`, `offline`, `channel_state`, `alarm`…
    pub kind: String,
    pub data: serde_json::Value,
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub login_code: Option<String>,
    pub channel: Option<u32>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u32>,
    /// Only events of these devices (a caller's rights).
    pub login_codes: Option<Vec<String>>,
}

/// What the cloud keeps.
pub trait Store: crate::accounts::Accounts + Send + Sync + 'static {
    /// A new device with its password's PHC hash (see [`crate::Passwords`]).
    fn create_device(
        &self,
        login_code: &str,
        passwd_hash: &str,
        name: &str,
        now: i64,
    ) -> impl Future<Output = Result<Device>> + Send;
    fn device(&self, login_code: &str) -> impl Future<Output = Result<Option<Device>>> + Send;
    /// Devices in login_code order, after `after`, at most `limit`.
    fn devices(&self, after: Option<&str>, limit: u32) -> impl Future<Output = Result<Vec<Device>>> + Send;
    /// The devices of `codes` (sorted, no duplicates) that exist, in that
    /// order: a scoped caller's page, a few statements for any number.
    fn devices_of(&self, codes: &[String]) -> impl Future<Output = Result<Vec<Device>>> + Send;
    fn delete_device(&self, login_code: &str) -> impl Future<Output = Result<bool>> + Send;
    /// A new label; false when there is no such device.
    fn rename_device(&self, login_code: &str, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// How many devices are provisioned.
    fn device_count(&self) -> impl Future<Output = Result<u64>> + Send;
    /// The device's password hash (PHC string), if the device exists.
    fn password_hash(&self, login_code: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// A session began on `node`: models recorded, online, owned by
    /// `node`; the session's epoch (one more than any before it), which
    /// fences every later write of this session.
    fn logged_in(
        &self,
        login_code: &str,
        hardware_model: &str,
        firmware_model: &str,
        now: i64,
        node: &str,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// The session of `epoch` ended: offline, channels too. False (and
    /// nothing changed) when a later login holds the device.
    fn set_offline(&self, login_code: &str, now: i64, epoch: i64) -> impl Future<Output = Result<bool>> + Send;
    /// Every device that `node` (or no node) held still online, or with a
    /// channel not offline, set offline, channels too; the login codes
    /// that were. Run when a node starts, and when it stops.
    fn all_offline(&self, now: i64, node: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Devices held by nodes whose heartbeat is older than `dead_before`
    /// (a node that died) set offline; their login codes.
    fn orphans_offline(&self, now: i64, dead_before: i64) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// A node's heartbeat, with the ivr version it runs and the cluster
    /// protocol it speaks (what an upgrade one node at a time shows).
    fn node_alive(
        &self,
        id: &str,
        url: &str,
        version: &str,
        bus: u32,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn nodes(&self) -> impl Future<Output = Result<Vec<Node>>> + Send;
    /// Devices online, by the node holding their session.
    fn online_by_node(&self) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// The node holding a device's session, if it is online (one indexed
    /// read: the relay's question).
    fn holder(&self, login_code: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// [`Store::holder`] for many devices at once (a batch's): (login
    /// code, node) for those online, in no particular order.
    fn holders(&self, codes: &[&str]) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// The channel numbers this node last wrote for a device it holds
    /// (`None`: not known here; ask [`Store::device`]).
    fn cached_channels(&self, login_code: &str) -> Option<Vec<u32>>;
    /// Whether other nodes serve from this store too (PostgreSQL), so a
    /// change made here reaches what they verified only as their copies
    /// run out (see `trust`).
    fn shared(&self) -> bool;
    /// Writes the `last_seen` of Keepalives since the last flush; how many
    /// devices.
    fn flush_seen(&self) -> impl Future<Output = Result<usize>> + Send;
    /// Deletes events before `at` and all but the newest `keep` (0: no
    /// cap); how many went.
    fn trim_events(&self, before: Option<i64>, keep: u64) -> impl Future<Output = Result<u64>> + Send;
    /// A Keepalive of the session of `epoch`: last_seen (kept in memory
    /// until [`Store::flush_seen`]), and the channels; the channels whose
    /// state, session or alarm changed, or `None` when a later login holds
    /// the device (nothing written).
    fn keepalive(
        &self,
        login_code: &str,
        channels: &[ChannelRow],
        now: i64,
        epoch: i64,
    ) -> impl Future<Output = Result<Option<Vec<ChannelRow>>>> + Send;
    fn add_event(
        &self,
        login_code: &str,
        channel: Option<u32>,
        kind: &str,
        data: &serde_json::Value,
        now: i64,
    ) -> impl Future<Output = Result<Event>> + Send;
    fn events(&self, f: &EventFilter) -> impl Future<Output = Result<Vec<Event>>> + Send;
    fn event(&self, id: i64) -> impl Future<Output = Result<Option<Event>>> + Send;
    /// Adds an image of `firmware_model` for `hardware_model` (replacing the one of the same models); the token of
    /// the replaced image, whose file is now unused.
    fn add_firmware(&self, fw: &Firmware) -> impl Future<Output = Result<Option<String>>> + Send;
    /// The newest image for a hardware model.
    fn latest_firmware(&self, hardware_model: &str) -> impl Future<Output = Result<Option<Firmware>>> + Send;
    fn firmware_by_token(&self, token: &str) -> impl Future<Output = Result<Option<Firmware>>> + Send;
    fn firmwares(&self) -> impl Future<Output = Result<Vec<Firmware>>> + Send;
    /// Removes an image from the catalogue; its token (whose file is now
    /// unused), or `None` when there was no such image.
    fn delete_firmware(
        &self,
        hardware_model: &str,
        firmware_model: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    // ---------- recordings ----------
    fn add_record_session(&self, s: &RecordSession) -> impl Future<Output = Result<()>> + Send;
    /// Marks a session stopped; false if it was not running.
    fn stop_record_session(&self, session_id: &str, now: i64) -> impl Future<Output = Result<bool>> + Send;
    fn record_session(&self, session_id: &str) -> impl Future<Output = Result<Option<RecordSession>>> + Send;
    /// The channel's session not stopped, if any.
    fn running_record_session(
        &self,
        login_code: &str,
        channel: u32,
    ) -> impl Future<Output = Result<Option<RecordSession>>> + Send;
    /// Indexes a stored segment; false if that (session, seq) is indexed
    /// already (a re-sent upload).
    fn add_segment(&self, s: &SegmentRow) -> impl Future<Output = Result<bool>> + Send;
    /// A channel's segments overlapping `[from_ms, to_ms)`, oldest first,
    /// at most `limit`.
    fn segments(
        &self,
        login_code: &str,
        channel: u32,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SegmentRow>>> + Send;
    fn segment(&self, id: i64) -> impl Future<Output = Result<Option<SegmentRow>>> + Send;
    /// Indexed segments' ids and paths, by id, after `after`: at most
    /// `limit` (reconciling with the disk, a page at a time).
    fn segment_paths_after(&self, after: i64, limit: u32) -> impl Future<Output = Result<Vec<(i64, String)>>> + Send;
    /// The oldest segments of all channels, at most `limit`.
    fn oldest_segments(&self, limit: u32) -> impl Future<Output = Result<Vec<SegmentRow>>> + Send;
    /// A channel's segments that ended before `before_ms`, at most `limit`.
    fn segments_ended_before(
        &self,
        login_code: &str,
        channel: u32,
        before_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SegmentRow>>> + Send;
    /// Deletes a segment's row (and takes it off its channel's totals);
    /// whether it was there.
    fn delete_segment(&self, s: &SegmentRow) -> impl Future<Output = Result<bool>> + Send;
    /// As [`Store::delete_segment`] unless a hold covers it (checked in
    /// the same statement, so a hold made while retention runs still keeps
    /// what it covers); whether the row went.
    fn delete_unheld_segment(&self, s: &SegmentRow) -> impl Future<Output = Result<bool>> + Send;
    /// Keeps a range of a channel's recording from retention; its id.
    fn add_hold(&self, h: &HoldRow) -> impl Future<Output = Result<i64>> + Send;
    /// A channel's holds overlapping `[from_ms, to_ms)`, oldest range first.
    fn holds(
        &self,
        login_code: &str,
        channel: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<HoldRow>>> + Send;
    /// Releases a hold; false if the channel has no hold of that id.
    fn delete_hold(&self, login_code: &str, channel: u32, id: i64) -> impl Future<Output = Result<bool>> + Send;
    /// Bytes and count of the stored segments some hold covers.
    fn held_totals(&self) -> impl Future<Output = Result<(u64, u64)>> + Send;
    /// Bytes and count of every stored segment.
    fn segment_totals(&self) -> impl Future<Output = Result<(u64, u64)>> + Send;
    fn set_record_policy(
        &self,
        login_code: &str,
        channel: u32,
        policy: &serde_json::Value,
    ) -> impl Future<Output = Result<()>> + Send;
    fn record_policies(&self) -> impl Future<Output = Result<Vec<(String, u32, serde_json::Value)>>> + Send;
    /// The policies of the devices `node` holds (the device's owner): what
    /// that node keeps, read through the owner index, not every policy.
    fn record_policies_held(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<(String, u32, serde_json::Value)>>> + Send;
    fn record_policy(
        &self,
        login_code: &str,
        channel: u32,
    ) -> impl Future<Output = Result<Option<serde_json::Value>>> + Send;
    /// Keeps the detection settings just applied to a channel (one per
    /// kind, replacing the last): IVR RPC can set them but not read them.
    fn set_detection(&self, login_code: &str, channel: u32, d: &Detection) -> impl Future<Output = Result<()>> + Send;
    /// The detection settings last applied to a channel, by kind.
    fn detections(&self, login_code: &str, channel: u32) -> impl Future<Output = Result<Vec<Detection>>> + Send;
}

/// `(login_code, channel, policy)` rows; a policy that is not JSON reads
/// as `null` (and is skipped by whoever reads it).
fn policy_rows(rows: &[Row]) -> Result<Vec<(String, u32, serde_json::Value)>> {
    rows.iter()
        .map(|r| Ok((r.text(0)?, r.num(1)?, serde_json::from_str(&r.text(2)?).unwrap_or(serde_json::Value::Null))))
        .collect()
}

fn row_to_event(r: &Row) -> Result<Event> {
    Ok(Event {
        id: r.int(0)?,
        at: r.int(1)?,
        login_code: r.text(2)?,
        channel: r.opt_int(3)?.map(|c| c as u32),
        kind: r.text(4)?,
        data: serde_json::from_str(&r.text(5)?).unwrap_or(serde_json::Value::Null),
    })
}

fn row_to_firmware(r: &Row) -> Result<Firmware> {
    Ok(Firmware {
        hardware_model: r.text(0)?,
        firmware_model: r.text(1)?,
        token: r.text(2)?,
        size: r.num(3)?,
        uploaded_at: r.int(4)?,
        sha256: r.opt_text(5)?,
    })
}

const FIRMWARE_COLS: &str = "hardware_model, firmware_model, token, size, uploaded_at, sha256";

/// Migrations, in order; the database's `user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE device (
        login_code TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        passwd_hash TEXT NOT NULL,
        online INTEGER NOT NULL DEFAULT 0,
        hardware_model TEXT,
        firmware_model TEXT,
        last_seen INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE channel (
        login_code TEXT NOT NULL REFERENCES device(login_code) ON DELETE CASCADE,
        channel INTEGER NOT NULL,
        state INTEGER NOT NULL,
        record_session TEXT,
        alarm INTEGER NOT NULL DEFAULT 0,
        changed_at INTEGER NOT NULL,
        PRIMARY KEY (login_code, channel)
    );
    CREATE TABLE event (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        login_code TEXT NOT NULL,
        channel INTEGER,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX event_device_at ON event(login_code, at);",
    "CREATE TABLE firmware (
        hardware_model TEXT NOT NULL,
        firmware_model TEXT NOT NULL,
        token TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        uploaded_at INTEGER NOT NULL,
        PRIMARY KEY (hardware_model, firmware_model)
    );",
    "CREATE TABLE record_session (
        session_id TEXT PRIMARY KEY,
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        reason TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        stopped_at INTEGER
    );
    CREATE INDEX record_session_channel ON record_session(login_code, channel, started_at);
    CREATE TABLE segment (
        id INTEGER PRIMARY KEY,
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        path TEXT NOT NULL UNIQUE,
        UNIQUE (session_id, seq)
    );
    CREATE INDEX segment_channel_start ON segment(login_code, channel, start_ms);
    CREATE TABLE record_policy (
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (login_code, channel)
    );",
    "ALTER TABLE firmware ADD COLUMN sha256 TEXT;
    CREATE INDEX event_at ON event(at);",
    crate::accounts::MIGRATION,
    // The cluster: which node holds a device's session, under which epoch,
    // and each node's heartbeat.
    "ALTER TABLE device ADD COLUMN owner TEXT;
    ALTER TABLE device ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX device_owner ON device(owner);
    CREATE TABLE node (id TEXT PRIMARY KEY, url TEXT NOT NULL, seen INTEGER NOT NULL);",
    // Holds: ranges of a channel's recording that retention keeps.
    "CREATE TABLE record_hold (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        from_ms INTEGER NOT NULL,
        to_ms INTEGER NOT NULL,
        note TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX record_hold_channel ON record_hold(login_code, channel, from_ms);",
    // Retention without passes over every segment: bytes and count kept
    // per channel as segments come and go (the quota's check read a SUM
    // over the whole table every 10 s), and the oldest found by an index.
    "CREATE TABLE segment_total (
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (login_code, channel)
    );
    INSERT INTO segment_total (login_code, channel, bytes, count)
        SELECT login_code, channel, SUM(bytes), COUNT(*) FROM segment GROUP BY login_code, channel;
    CREATE INDEX segment_start ON segment(start_ms);",
    // Rolling upgrades: what each node runs. Columns with defaults, so
    // that nodes of the version before (which write neither) keep working
    // beside upgraded ones.
    "ALTER TABLE node ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE node ADD COLUMN bus INTEGER NOT NULL DEFAULT 0;",
    // Detection settings as last applied (the protocol cannot read them
    // back from a device). A node of the version before never reads or
    // writes this table.
    "CREATE TABLE detect_config (
        login_code TEXT NOT NULL,
        channel INTEGER NOT NULL,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,
        set_by TEXT NOT NULL,
        set_at INTEGER NOT NULL,
        PRIMARY KEY (login_code, channel, kind)
    );",
    // PostgreSQL only: room in each page of devices for the new version
    // of a row, so the `last_seen` flushes (every device every
    // Keepalive) update in place (HOT) instead of adding entries to both
    // indexes; pages written before this fill as they are rewritten.
    "/*postgres ALTER TABLE device SET (fillfactor = 70) postgres*/",
];

/// The condition (on a `segment` row) that no hold covers it.
const UNHELD: &str = "NOT EXISTS (SELECT 1 FROM record_hold h WHERE h.login_code = segment.login_code
    AND h.channel = segment.channel AND h.from_ms < segment.start_ms + segment.duration_ms
    AND h.to_ms > segment.start_ms)";

/// A range of a channel's recording that retention keeps (an evidence
/// hold): segments overlapping it are deleted neither for their age nor
/// for the byte quota until it is released. It may reach into the future
/// (what will be recorded then is kept too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HoldRow {
    pub id: i64,
    pub login_code: String,
    pub channel: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    pub note: String,
    /// Who made it (as the audit log names callers).
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

const HOLD_COLS: &str = "id, login_code, channel, from_ms, to_ms, note, created_by, created_at";

fn row_to_hold(r: &Row) -> Result<HoldRow> {
    Ok(HoldRow {
        id: r.int(0)?,
        login_code: r.text(1)?,
        channel: r.num(2)?,
        from_ms: r.int(3)?,
        to_ms: r.int(4)?,
        note: r.text(5)?,
        created_by: r.text(6)?,
        created_at: r.int(7)?,
    })
}

/// A cloud recording the cloud asked a device for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordSession {
    pub session_id: String,
    pub login_code: String,
    pub channel: u32,
    /// `api`, `continuous`, `schedule`, `alarm`.
    pub reason: String,
    pub started_at: i64,
    pub stopped_at: Option<i64>,
}

/// A stored segment: `path` is relative to the recordings directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentRow {
    pub id: i64,
    pub login_code: String,
    pub channel: u32,
    pub session_id: String,
    pub seq: u64,
    /// Unix milliseconds of the first frame.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub bytes: u64,
    pub path: String,
}

impl SegmentRow {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

const SEGMENT_COLS: &str = "id, login_code, channel, session_id, seq, start_ms, duration_ms, bytes, path";

fn row_to_segment(r: &Row) -> Result<SegmentRow> {
    Ok(SegmentRow {
        id: r.int(0)?,
        login_code: r.text(1)?,
        channel: r.num(2)?,
        session_id: r.text(3)?,
        seq: r.num(4)?,
        start_ms: r.int(5)?,
        duration_ms: r.int(6)?,
        bytes: r.num(7)?,
        path: r.text(8)?,
    })
}

fn row_to_session(r: &Row) -> Result<RecordSession> {
    Ok(RecordSession {
        session_id: r.text(0)?,
        login_code: r.text(1)?,
        channel: r.num(2)?,
        reason: r.text(3)?,
        started_at: r.int(4)?,
        stopped_at: r.opt_int(5)?,
    })
}

const SESSION_COLS: &str = "session_id, login_code, channel, reason, started_at, stopped_at";

/// Detection settings applied to a channel through the API: what was
/// sent (the params of `AlarmMoveDetectConfig` or
/// `AlarmRectIntrusionDetectConfig`), by whom and when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    /// `motion` or `intrusion`.
    pub kind: String,
    pub config: serde_json::Value,
    /// The caller, as the audit log names callers.
    pub set_by: String,
    pub set_at: i64,
}

/// A firmware image in the catalogue (the bytes are in `DATA/firmware/<token>.bin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Firmware {
    pub hardware_model: String,
    pub firmware_model: String,
    /// Unguessable: the download URL is `/firmware/<token>`.
    #[serde(skip)]
    pub token: String,
    pub size: u64,
    pub uploaded_at: i64,
    /// SHA-256 of the image (hex), handed to devices with the URL so they
    /// can check what they downloaded. `None` for images stored before it
    /// was kept.
    pub sha256: Option<String>,
}

/// The store over SQLite or PostgreSQL.
pub struct SqlStore {
    pub(crate) db: AnyDb,
    /// `last_seen` of Keepalives not yet written.
    seen: Mutex<HashMap<String, i64>>,
    /// The channel rows this node last wrote, per device it holds.
    channels: Mutex<HashMap<String, Vec<ChannelRow>>>,
}

const DEVICE_COLS: &str = "login_code, name, online, hardware_model, firmware_model, last_seen, created_at, owner";
const CHANNEL_COLS: &str = "channel, state, record_session, alarm, changed_at";

fn row_to_device(r: &Row) -> Result<Device> {
    Ok(Device {
        login_code: r.text(0)?,
        name: r.text(1)?,
        online: r.int(2)? != 0,
        hardware_model: r.opt_text(3)?,
        firmware_model: r.opt_text(4)?,
        last_seen: r.opt_int(5)?,
        created_at: r.int(6)?,
        node: r.opt_text(7)?,
        channels: Vec::new(),
    })
}

/// Channel rows (`login_code`, then the channel's columns), in login_code
/// order, onto the devices they belong to (in the same order).
fn attach_channels(devices: &mut [Device], rows: &[Row]) -> Result<()> {
    let mut i = 0;
    for r in rows {
        let lc = r.text(0)?;
        while i < devices.len() && devices[i].login_code < lc {
            i += 1;
        }
        if let Some(d) = devices.get_mut(i).filter(|d| d.login_code == lc) {
            d.channels.push(row_to_channel(r, 1)?);
        }
    }
    Ok(())
}

/// A channel row from `CHANNEL_COLS` starting at column `at`.
fn row_to_channel(r: &Row, at: usize) -> Result<ChannelRow> {
    Ok(ChannelRow {
        channel: r.num(at)?,
        state: r.num(at + 1)?,
        record_session: r.opt_text(at + 2)?,
        alarm: r.num(at + 3)?,
        changed_at: r.int(at + 4)?,
    })
}

impl SqlStore {
    fn new(db: AnyDb) -> SqlStore {
        SqlStore { db, seen: Mutex::default(), channels: Mutex::default() }
    }

    /// Opens (or creates) `dir/ivr.sqlite3` and runs pending migrations.
    pub fn open(dir: &Path) -> Result<SqlStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join("ivr.sqlite3");
        let db = Sqlite::open_file(&file)?;
        // Nobody else's to read: device password hashes are in it (SQLite
        // gives its WAL and shm files the database's mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Db(format!("cannot make {} private (0600): {e}", file.display())))?;
        }
        db.migrate_now(MIGRATIONS)?;
        Ok(SqlStore::new(AnyDb::Sqlite(db)))
    }

    pub fn in_memory() -> Result<SqlStore> {
        let db = Sqlite::open_memory()?;
        db.migrate_now(MIGRATIONS)?;
        Ok(SqlStore::new(AnyDb::Sqlite(db)))
    }

    /// Connects to PostgreSQL (`postgres://user[:password]@host[:port]/db`)
    /// and runs pending migrations (one node at a time).
    pub async fn postgres(url: &str) -> Result<SqlStore> {
        let db = crate::pg::Postgres::connect(url).await?;
        db.migrate(MIGRATIONS).await?;
        Ok(SqlStore::new(AnyDb::Postgres(Box::new(db))))
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    fn seen_of(&self, login_code: &str) -> Option<i64> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(login_code).copied()
    }

    /// The Keepalive times not yet flushed, over what the rows said.
    fn overlay_seen(&self, devices: &mut [Device]) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for d in devices {
            if let Some(t) = seen.get(&d.login_code) {
                d.last_seen = Some(*t);
            }
        }
    }

    async fn channels_of(&self, login_code: &str) -> Result<Vec<ChannelRow>> {
        let rows = self
            .db
            .query(
                &format!("SELECT {CHANNEL_COLS} FROM channel WHERE login_code = $1 ORDER BY channel"),
                args![login_code],
            )
            .await?;
        rows.iter().map(|r| row_to_channel(r, 0)).collect()
    }

    fn forget_channels(&self, login_code: Option<&str>) {
        let mut c = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match login_code {
            Some(lc) => {
                c.remove(lc);
            }
            None => c.clear(),
        }
    }

    /// Deletes `s`'s row when `cond` (more SQL on the row) holds, and
    /// takes it off its channel's totals in the same transaction.
    async fn delete_counted(&self, s: &SegmentRow, cond: &str) -> Result<bool> {
        let out = self
            .db
            .transaction(vec![
                Stmt::new(format!("DELETE FROM segment WHERE id = $1 {cond}"), args![s.id]),
                Stmt::new(
                    "UPDATE segment_total SET bytes = bytes - $1, count = count - 1
                     WHERE login_code = $2 AND channel = $3",
                    args![s.bytes, &s.login_code, s.channel],
                )
                .if_changed(0),
            ])
            .await?;
        Ok(out[0].changed == 1)
    }

    async fn segment_query(&self, sql: &str, a: Vec<Val>) -> Result<Vec<SegmentRow>> {
        let rows = self.db.query(&format!("SELECT {SEGMENT_COLS} FROM segment {sql}"), a).await?;
        rows.iter().map(row_to_segment).collect()
    }

    /// Devices matching `cond` (parameters `a`) that are online or have a
    /// channel not offline set offline, channels too, in one transaction;
    /// their login codes.
    async fn offline_where(&self, now: i64, cond: &str, a: Vec<Val>) -> Result<Vec<String>> {
        let n = a.len() as u32 + 1;
        let mut a2 = a.clone();
        a2.push(Val::Int(now));
        let out = self
            .db
            .transaction(vec![
                Stmt::new(
                    format!(
                        "SELECT login_code FROM device WHERE ({cond}) AND online != 0
                         UNION SELECT c.login_code FROM channel c JOIN device d ON d.login_code = c.login_code
                         WHERE ({cond}) AND c.state != 0 ORDER BY 1"
                    ),
                    a.clone(),
                ),
                // Channels first: the device's owner is still set.
                Stmt::new(
                    format!(
                        "UPDATE channel SET state = 0, changed_at = ${n} WHERE state != 0 AND login_code IN
                         (SELECT login_code FROM device WHERE ({cond}))"
                    ),
                    a2,
                ),
                Stmt::new(format!("UPDATE device SET online = 0, owner = NULL WHERE ({cond}) AND online != 0"), a),
            ])
            .await?;
        let lcs: Vec<String> = out[0].rows.iter().map(|r| r.text(0)).collect::<Result<_>>()?;
        for lc in &lcs {
            self.forget_channels(Some(lc));
        }
        Ok(lcs)
    }
}

impl Store for SqlStore {
    async fn create_device(&self, login_code: &str, passwd_hash: &str, name: &str, now: i64) -> Result<Device> {
        let n = self
            .db
            .execute(
                "INSERT INTO device (login_code, name, passwd_hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                args![login_code, name, passwd_hash, now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Exists(login_code.to_owned()));
        }
        self.device(login_code).await?.ok_or_else(|| StoreError::NoDevice(login_code.to_owned()))
    }

    async fn device(&self, login_code: &str) -> Result<Option<Device>> {
        let rows = self
            .db
            .query(&format!("SELECT {DEVICE_COLS} FROM device WHERE login_code = $1"), args![login_code])
            .await?;
        let Some(r) = rows.first() else { return Ok(None) };
        let mut d = row_to_device(r)?;
        d.channels = self.channels_of(login_code).await?;
        if let Some(t) = self.seen_of(login_code) {
            d.last_seen = Some(t);
        }
        Ok(Some(d))
    }

    async fn devices(&self, after: Option<&str>, limit: u32) -> Result<Vec<Device>> {
        let rows = match after {
            Some(a) => {
                self.db
                    .query(
                        &format!("SELECT {DEVICE_COLS} FROM device WHERE login_code > $1 ORDER BY login_code LIMIT $2"),
                        args![a, limit],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(&format!("SELECT {DEVICE_COLS} FROM device ORDER BY login_code LIMIT $1"), args![limit])
                    .await?
            }
        };
        let mut devices: Vec<Device> = rows.iter().map(row_to_device).collect::<Result<_>>()?;
        self.overlay_seen(&mut devices);
        let (Some(first), Some(last)) = (devices.first(), devices.last()) else { return Ok(devices) };
        let (first, last) = (first.login_code.clone(), last.login_code.clone());
        // The page's channels in one query (not one per device), in the same order.
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT login_code, {CHANNEL_COLS} FROM channel
                     WHERE login_code >= $1 AND login_code <= $2 ORDER BY login_code, channel"
                ),
                args![first, last],
            )
            .await?;
        attach_channels(&mut devices, &rows)?;
        Ok(devices)
    }

    async fn devices_of(&self, codes: &[String]) -> Result<Vec<Device>> {
        // Fixed-size IN lists (the last code repeated to fill one), so
        // there are two statements to prepare, whatever the count.
        const CHUNK: usize = 64;
        let marks = (1..=CHUNK).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let devices_sql = format!("SELECT {DEVICE_COLS} FROM device WHERE login_code IN ({marks}) ORDER BY login_code");
        let channels_sql = format!(
            "SELECT login_code, {CHANNEL_COLS} FROM channel WHERE login_code IN ({marks}) ORDER BY login_code, channel"
        );
        let mut out = Vec::with_capacity(codes.len());
        for chunk in codes.chunks(CHUNK) {
            let args = || -> Vec<Val> {
                let pad = chunk.last().map_or("", String::as_str);
                chunk.iter().map(String::as_str).chain(std::iter::repeat(pad)).take(CHUNK).map(Val::from).collect()
            };
            let rows = self.db.query(&devices_sql, args()).await?;
            let mut devices: Vec<Device> = rows.iter().map(row_to_device).collect::<Result<_>>()?;
            if devices.is_empty() {
                continue;
            }
            let rows = self.db.query(&channels_sql, args()).await?;
            attach_channels(&mut devices, &rows)?;
            out.extend(devices);
        }
        self.overlay_seen(&mut out);
        Ok(out)
    }

    async fn delete_device(&self, login_code: &str) -> Result<bool> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(login_code);
        self.forget_channels(Some(login_code));
        // Channels go with it (no foreign keys needed on either database).
        let out = self
            .db
            .transaction(vec![
                Stmt::new("DELETE FROM channel WHERE login_code = $1", args![login_code]),
                Stmt::new("DELETE FROM device WHERE login_code = $1", args![login_code]),
                Stmt::new("DELETE FROM detect_config WHERE login_code = $1", args![login_code]),
            ])
            .await?;
        Ok(out[1].changed > 0)
    }

    async fn rename_device(&self, login_code: &str, name: &str) -> Result<bool> {
        Ok(self.db.execute("UPDATE device SET name = $2 WHERE login_code = $1", args![login_code, name]).await? > 0)
    }

    async fn device_count(&self) -> Result<u64> {
        let rows = self.db.query("SELECT COUNT(*) FROM device", vec![]).await?;
        rows.first().map_or(Ok(0), |r| r.num(0))
    }

    async fn password_hash(&self, login_code: &str) -> Result<Option<String>> {
        let rows = self.db.query("SELECT passwd_hash FROM device WHERE login_code = $1", args![login_code]).await?;
        rows.first().map(|r| r.text(0)).transpose()
    }

    async fn logged_in(
        &self,
        login_code: &str,
        hardware_model: &str,
        firmware_model: &str,
        now: i64,
        node: &str,
    ) -> Result<i64> {
        self.forget_channels(Some(login_code));
        let rows = self
            .db
            .query(
                "UPDATE device SET online = 1, hardware_model = $2, firmware_model = $3, last_seen = $4,
                    owner = $5, epoch = epoch + 1
                 WHERE login_code = $1 RETURNING epoch",
                args![login_code, hardware_model, firmware_model, now, node],
            )
            .await?;
        match rows.first() {
            Some(r) => r.int(0),
            None => Err(StoreError::NoDevice(login_code.to_owned())),
        }
    }

    async fn set_offline(&self, login_code: &str, now: i64, epoch: i64) -> Result<bool> {
        self.forget_channels(Some(login_code));
        let out = self
            .db
            .transaction(vec![
                Stmt::new(
                    "UPDATE device SET online = 0, owner = NULL WHERE login_code = $1 AND epoch = $2",
                    args![login_code, epoch],
                ),
                Stmt::new(
                    "UPDATE channel SET state = 0, changed_at = $3 WHERE login_code = $1 AND state != 0
                     AND (SELECT epoch FROM device WHERE login_code = $1) = $2",
                    args![login_code, epoch, now],
                ),
            ])
            .await?;
        Ok(out[0].changed > 0)
    }

    async fn all_offline(&self, now: i64, node: &str) -> Result<Vec<String>> {
        self.offline_where(now, "owner = $1 OR owner IS NULL", args![node]).await
    }

    async fn orphans_offline(&self, now: i64, dead_before: i64) -> Result<Vec<String>> {
        // Every node runs this every Keepalive interval: most times no
        // node is dead, and the node table (a row a node) says so without
        // reading the devices. Owners are only ever nodes that wrote their
        // heartbeat first, so the devices of dead ones are found through
        // the owner index, not by a scan for owners not among the living.
        let dead = self.db.query("SELECT 1 FROM node WHERE seen < $1 LIMIT 1", args![dead_before]).await?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        self.offline_where(now, "owner IN (SELECT id FROM node WHERE seen < $1)", args![dead_before]).await
    }

    async fn node_alive(&self, id: &str, url: &str, version: &str, bus: u32, now: i64) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO node (id, url, seen, version, bus) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, seen = excluded.seen,
                     version = excluded.version, bus = excluded.bus",
                args![id, url, now, version, i64::from(bus)],
            )
            .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = self.db.query("SELECT id, url, seen, version, bus FROM node ORDER BY id", vec![]).await?;
        rows.iter()
            .map(|r| Ok(Node { id: r.text(0)?, url: r.text(1)?, seen: r.int(2)?, version: r.text(3)?, bus: r.int(4)? }))
            .collect()
    }

    async fn online_by_node(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .db
            .query(
                "SELECT owner, COUNT(*) FROM device WHERE online != 0 AND owner IS NOT NULL GROUP BY owner ORDER BY owner",
                vec![],
            )
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.int(1)?))).collect()
    }

    async fn holder(&self, login_code: &str) -> Result<Option<String>> {
        let rows =
            self.db.query("SELECT owner FROM device WHERE login_code = $1 AND online != 0", args![login_code]).await?;
        Ok(rows.first().map(|r| r.opt_text(0)).transpose()?.flatten())
    }

    async fn holders(&self, codes: &[&str]) -> Result<Vec<(String, String)>> {
        // Fixed-size IN lists, as in `devices_of`: one statement to prepare.
        const CHUNK: usize = 64;
        let marks = (1..=CHUNK).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT login_code, owner FROM device WHERE login_code IN ({marks}) AND online != 0");
        let mut out = Vec::with_capacity(codes.len());
        for chunk in codes.chunks(CHUNK) {
            let pad = chunk.last().copied().unwrap_or("");
            let args = chunk.iter().copied().chain(std::iter::repeat(pad)).take(CHUNK).map(Val::from).collect();
            for r in self.db.query(&sql, args).await? {
                if let Some(node) = r.opt_text(1)? {
                    out.push((r.text(0)?, node));
                }
            }
        }
        Ok(out)
    }

    fn cached_channels(&self, login_code: &str) -> Option<Vec<u32>> {
        let c = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        c.get(login_code).map(|rows| rows.iter().map(|r| r.channel).collect())
    }

    fn shared(&self) -> bool {
        self.kind() == "postgres"
    }

    async fn flush_seen(&self) -> Result<usize> {
        let pending = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        // One statement per second of timestamps (and per 500 devices):
        // 100,000 devices at a 30 s Keepalive flushed every 5 s is about
        // 40 statements in one transaction, not 3,300 transactions a second.
        let mut by_time: HashMap<i64, Vec<&String>> = HashMap::new();
        for (lc, t) in &pending {
            by_time.entry(*t).or_default().push(lc);
        }
        let mut stmts = Vec::new();
        for (t, lcs) in by_time {
            for chunk in lcs.chunks(500) {
                let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let mut a = vec![Val::Int(t)];
                a.extend(chunk.iter().map(|lc| Val::from(*lc)));
                stmts.push(Stmt::new(
                    format!(
                        "UPDATE device SET last_seen = $1 WHERE (last_seen IS NULL OR last_seen < $1)
                         AND login_code IN ({})",
                        marks.join(", ")
                    ),
                    a,
                ));
            }
        }
        match self.db.transaction(stmts).await {
            Ok(_) => Ok(pending.len()),
            Err(e) => {
                // Kept for the next flush (newer Keepalives win).
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                for (lc, t) in pending {
                    seen.entry(lc).or_insert(t);
                }
                Err(e)
            }
        }
    }

    async fn trim_events(&self, before: Option<i64>, keep: u64) -> Result<u64> {
        let mut n = 0;
        if let Some(at) = before {
            n += self.db.execute("DELETE FROM event WHERE at < $1", args![at]).await?;
        }
        if keep > 0 {
            // Ids count up by one an event (AUTOINCREMENT, a sequence), so
            // the newest `keep` are those above max(id) − keep: one end of
            // the primary key, where `ORDER BY id DESC OFFSET keep` walked
            // every row kept (5,000,000 by default) every 10 s on every
            // node. An insert that failed leaves a gap, and one fewer kept.
            let rows = self.db.query("SELECT max(id) FROM event", args![]).await?;
            let newest = match rows.first() {
                Some(r) => r.opt_int(0)?,
                None => None,
            };
            if let Some(cut) = newest.and_then(|m| m.checked_sub(i64::try_from(keep).unwrap_or(i64::MAX))) {
                n += self.db.execute("DELETE FROM event WHERE id <= $1", args![cut]).await?;
            }
        }
        Ok(n)
    }

    async fn keepalive(
        &self,
        login_code: &str,
        channels: &[ChannelRow],
        now: i64,
        epoch: i64,
    ) -> Result<Option<Vec<ChannelRow>>> {
        let cached = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(login_code).cloned();
        let was_cached = cached.is_some();
        let before = match cached {
            Some(c) => c,
            None => self.channels_of(login_code).await?,
        };
        let changed: Vec<ChannelRow> = channels
            .iter()
            .filter(|c| {
                !before
                    .iter()
                    .find(|b| b.channel == c.channel)
                    .is_some_and(|b| b.state == c.state && b.record_session == c.record_session && b.alarm == c.alarm)
            })
            .map(|c| ChannelRow { changed_at: now, ..c.clone() })
            .collect();
        if !changed.is_empty() {
            // Each write carries the epoch check (no transaction: a
            // Keepalive must not wait for a dedicated connection). A write
            // that changes nothing was fenced out: a later login holds the
            // device.
            let writes = changed.iter().map(|c| {
                self.db.execute(
                    "INSERT INTO channel (login_code, channel, state, record_session, alarm, changed_at)
                     SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT), CAST($4 AS TEXT),
                       CAST($5 AS BIGINT), CAST($6 AS BIGINT) WHERE EXISTS
                       (SELECT 1 FROM device WHERE login_code = $1 AND epoch = $7)
                     ON CONFLICT (login_code, channel) DO UPDATE SET state = excluded.state,
                       record_session = excluded.record_session, alarm = excluded.alarm,
                       changed_at = excluded.changed_at",
                    args![login_code, c.channel, c.state, c.record_session.clone(), c.alarm, now, epoch],
                )
            });
            let written = futures_util::future::try_join_all(writes).await?;
            if written.contains(&0) {
                self.forget_channels(Some(login_code));
                return Ok(None);
            }
        }
        // The common Keepalive (nothing changed, rows known) touches only
        // `seen`, and allocates nothing once the device is in it.
        if !(was_cached && changed.is_empty()) {
            let mut after = before;
            for c in &changed {
                match after.iter_mut().find(|b| b.channel == c.channel) {
                    Some(b) => *b = c.clone(),
                    None => after.push(c.clone()),
                }
            }
            self.channels.lock().unwrap_or_else(|p| p.into_inner()).insert(login_code.to_owned(), after);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(login_code) {
            Some(t) => *t = now,
            None => {
                seen.insert(login_code.to_owned(), now);
            }
        }
        Ok(Some(changed))
    }

    async fn add_event(
        &self,
        login_code: &str,
        channel: Option<u32>,
        kind: &str,
        data: &serde_json::Value,
        now: i64,
    ) -> Result<Event> {
        let rows = self
            .db
            .query(
                "INSERT INTO event (at, login_code, channel, kind, data) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                args![now, login_code, channel, kind, data.to_string()],
            )
            .await?;
        let id = rows.first().ok_or_else(|| StoreError::Db("INSERT … RETURNING gave no row".into()))?.int(0)?;
        Ok(Event { id, at: now, login_code: login_code.to_owned(), channel, kind: kind.to_owned(), data: data.clone() })
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<Event>> {
        // Only the filters given go into the SQL: `($1 IS NULL OR …)` would
        // keep SQLite from the (login_code, at) index and scan every event
        // (44 ms a query at 400,000 events; 0.1 ms with the index).
        let mut sql = String::from("SELECT id, at, login_code, channel, kind, data FROM event WHERE TRUE");
        let mut a: Vec<Val> = Vec::new();
        let mut add = |cond: &str, v: Val| {
            a.push(v);
            sql.push_str(&format!(" AND {cond} ${}", a.len()));
        };
        if let Some(lc) = &f.login_code {
            add("login_code =", lc.into());
        }
        if let Some(ch) = f.channel {
            add("channel =", ch.into());
        }
        if let Some(k) = &f.kind {
            add("kind =", k.into());
        }
        if let Some(t) = f.since {
            add("at >=", t.into());
        }
        if let Some(t) = f.until {
            add("at <=", t.into());
        }
        if let Some(lcs) = &f.login_codes {
            // Each as its own parameter; an empty list matches nothing.
            let mut marks = Vec::with_capacity(lcs.len());
            for lc in lcs {
                a.push(lc.into());
                marks.push(format!("${}", a.len()));
            }
            if marks.is_empty() {
                sql.push_str(" AND FALSE");
            } else {
                sql.push_str(&format!(" AND login_code IN ({})", marks.join(",")));
            }
        }
        a.push(f.limit.unwrap_or(100).min(10_000).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", a.len()));
        let rows = self.db.query(&sql, a).await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn event(&self, id: i64) -> Result<Option<Event>> {
        let rows =
            self.db.query("SELECT id, at, login_code, channel, kind, data FROM event WHERE id = $1", args![id]).await?;
        rows.first().map(row_to_event).transpose()
    }

    async fn add_firmware(&self, fw: &Firmware) -> Result<Option<String>> {
        let out = self
            .db
            .transaction(vec![
                Stmt::new(
                    "SELECT token FROM firmware WHERE hardware_model = $1 AND firmware_model = $2",
                    args![&fw.hardware_model, &fw.firmware_model],
                ),
                Stmt::new(
                    "INSERT INTO firmware (hardware_model, firmware_model, token, size, uploaded_at, sha256)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (hardware_model, firmware_model) DO UPDATE SET token = excluded.token,
                       size = excluded.size, uploaded_at = excluded.uploaded_at, sha256 = excluded.sha256",
                    args![
                        &fw.hardware_model,
                        &fw.firmware_model,
                        &fw.token,
                        fw.size,
                        fw.uploaded_at,
                        fw.sha256.clone()
                    ],
                ),
            ])
            .await?;
        out[0].rows.first().map(|r| r.text(0)).transpose()
    }

    async fn latest_firmware(&self, hardware_model: &str) -> Result<Option<Firmware>> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {FIRMWARE_COLS} FROM firmware WHERE hardware_model = $1
                     ORDER BY uploaded_at DESC, firmware_model DESC LIMIT 1"
                ),
                args![hardware_model],
            )
            .await?;
        rows.first().map(row_to_firmware).transpose()
    }

    async fn firmware_by_token(&self, token: &str) -> Result<Option<Firmware>> {
        let rows =
            self.db.query(&format!("SELECT {FIRMWARE_COLS} FROM firmware WHERE token = $1"), args![token]).await?;
        rows.first().map(row_to_firmware).transpose()
    }

    async fn firmwares(&self) -> Result<Vec<Firmware>> {
        let rows = self
            .db
            .query(&format!("SELECT {FIRMWARE_COLS} FROM firmware ORDER BY hardware_model, uploaded_at"), vec![])
            .await?;
        rows.iter().map(row_to_firmware).collect()
    }

    async fn delete_firmware(&self, hardware_model: &str, firmware_model: &str) -> Result<Option<String>> {
        let rows = self
            .db
            .query(
                "DELETE FROM firmware WHERE hardware_model = $1 AND firmware_model = $2 RETURNING token",
                args![hardware_model, firmware_model],
            )
            .await?;
        rows.first().map(|r| r.text(0)).transpose()
    }

    async fn add_record_session(&self, s: &RecordSession) -> Result<()> {
        self.db
            .execute(
                &format!("INSERT INTO record_session ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                args![&s.session_id, &s.login_code, s.channel, &s.reason, s.started_at, s.stopped_at],
            )
            .await?;
        Ok(())
    }

    async fn stop_record_session(&self, session_id: &str, now: i64) -> Result<bool> {
        let n = self
            .db
            .execute(
                "UPDATE record_session SET stopped_at = $2 WHERE session_id = $1 AND stopped_at IS NULL",
                args![session_id, now],
            )
            .await?;
        Ok(n == 1)
    }

    async fn record_session(&self, session_id: &str) -> Result<Option<RecordSession>> {
        let rows = self
            .db
            .query(&format!("SELECT {SESSION_COLS} FROM record_session WHERE session_id = $1"), args![session_id])
            .await?;
        rows.first().map(row_to_session).transpose()
    }

    async fn running_record_session(&self, login_code: &str, channel: u32) -> Result<Option<RecordSession>> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {SESSION_COLS} FROM record_session
                     WHERE login_code = $1 AND channel = $2 AND stopped_at IS NULL ORDER BY started_at DESC LIMIT 1"
                ),
                args![login_code, channel],
            )
            .await?;
        rows.first().map(row_to_session).transpose()
    }

    async fn add_segment(&self, s: &SegmentRow) -> Result<bool> {
        let out = self
            .db
            .transaction(vec![
                Stmt::new(
                    "INSERT INTO segment (login_code, channel, session_id, seq, start_ms, duration_ms, bytes, path)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    args![&s.login_code, s.channel, &s.session_id, s.seq, s.start_ms, s.duration_ms, s.bytes, &s.path],
                ),
                // Counted once: a re-sent segment inserts nothing.
                Stmt::new(
                    "INSERT INTO segment_total (login_code, channel, bytes, count) VALUES ($1, $2, $3, 1)
                     ON CONFLICT (login_code, channel) DO UPDATE
                     SET bytes = segment_total.bytes + excluded.bytes, count = segment_total.count + 1",
                    args![&s.login_code, s.channel, s.bytes],
                )
                .if_changed(0),
            ])
            .await?;
        Ok(out[0].changed == 1)
    }

    async fn segments(
        &self,
        login_code: &str,
        channel: u32,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<SegmentRow>> {
        // Segments last at most an hour: the index range starts that much
        // earlier and the end condition trims it.
        self.segment_query(
            "WHERE login_code = $1 AND channel = $2 AND start_ms >= $3 AND start_ms < $4
               AND start_ms + duration_ms > $5 ORDER BY start_ms LIMIT $6",
            args![login_code, channel, from_ms - 3_600_000, to_ms, from_ms, limit],
        )
        .await
    }

    async fn segment(&self, id: i64) -> Result<Option<SegmentRow>> {
        Ok(self.segment_query("WHERE id = $1", args![id]).await?.pop())
    }

    async fn segment_paths_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, String)>> {
        let rows = self
            .db
            .query("SELECT id, path FROM segment WHERE id > $1 ORDER BY id LIMIT $2", args![after, limit])
            .await?;
        rows.iter().map(|r| Ok((r.int(0)?, r.text(1)?))).collect()
    }

    async fn oldest_segments(&self, limit: u32) -> Result<Vec<SegmentRow>> {
        self.segment_query(&format!("WHERE {UNHELD} ORDER BY start_ms LIMIT $1"), args![limit]).await
    }

    async fn segments_ended_before(
        &self,
        login_code: &str,
        channel: u32,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<SegmentRow>> {
        self.segment_query(
            &format!(
                "WHERE login_code = $1 AND channel = $2 AND start_ms < $3 AND start_ms + duration_ms <= $3
                 AND {UNHELD} ORDER BY start_ms LIMIT $4"
            ),
            args![login_code, channel, before_ms, limit],
        )
        .await
    }

    async fn delete_segment(&self, s: &SegmentRow) -> Result<bool> {
        self.delete_counted(s, "").await
    }

    async fn delete_unheld_segment(&self, s: &SegmentRow) -> Result<bool> {
        self.delete_counted(s, &format!("AND {UNHELD}")).await
    }

    async fn add_hold(&self, h: &HoldRow) -> Result<i64> {
        let rows = self
            .db
            .query(
                "INSERT INTO record_hold (login_code, channel, from_ms, to_ms, note, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                args![
                    h.login_code.as_str(),
                    h.channel,
                    h.from_ms,
                    h.to_ms,
                    h.note.as_str(),
                    h.created_by.as_str(),
                    h.created_at
                ],
            )
            .await?;
        rows.first().ok_or_else(|| StoreError::Db("INSERT … RETURNING gave no row".into()))?.int(0)
    }

    async fn holds(&self, login_code: &str, channel: u32, from_ms: i64, to_ms: i64) -> Result<Vec<HoldRow>> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {HOLD_COLS} FROM record_hold WHERE login_code = $1 AND channel = $2
                     AND from_ms < $3 AND to_ms > $4 ORDER BY from_ms, id"
                ),
                args![login_code, channel, to_ms, from_ms],
            )
            .await?;
        rows.iter().map(row_to_hold).collect()
    }

    async fn delete_hold(&self, login_code: &str, channel: u32, id: i64) -> Result<bool> {
        let n = self
            .db
            .execute(
                "DELETE FROM record_hold WHERE id = $1 AND login_code = $2 AND channel = $3",
                args![id, login_code, channel],
            )
            .await?;
        Ok(n == 1)
    }

    async fn held_totals(&self) -> Result<(u64, u64)> {
        let rows = self
            .db
            .query(
                // From the holds (few) through the channel index, not a
                // pass over every segment; `IN` counts a segment two holds
                // cover once.
                "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT), COUNT(*) FROM segment WHERE id IN (
                    SELECT s.id FROM record_hold h JOIN segment s ON s.login_code = h.login_code
                     AND s.channel = h.channel AND s.start_ms >= h.from_ms - 3600000 AND s.start_ms < h.to_ms
                     AND s.start_ms + s.duration_ms > h.from_ms)",
                vec![],
            )
            .await?;
        rows.first().map_or(Ok((0, 0)), |r| Ok((r.num(0)?, r.num(1)?)))
    }

    async fn segment_totals(&self) -> Result<(u64, u64)> {
        let rows = self
            .db
            .query(
                "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT), CAST(COALESCE(SUM(count), 0) AS BIGINT)
                 FROM segment_total",
                vec![],
            )
            .await?;
        rows.first().map_or(Ok((0, 0)), |r| Ok((r.num(0)?, r.num(1)?)))
    }

    async fn set_record_policy(&self, login_code: &str, channel: u32, policy: &serde_json::Value) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO record_policy (login_code, channel, policy) VALUES ($1, $2, $3)
                 ON CONFLICT (login_code, channel) DO UPDATE SET policy = excluded.policy",
                args![login_code, channel, policy.to_string()],
            )
            .await?;
        Ok(())
    }

    async fn record_policies(&self) -> Result<Vec<(String, u32, serde_json::Value)>> {
        let rows = self
            .db
            .query("SELECT login_code, channel, policy FROM record_policy ORDER BY login_code, channel", vec![])
            .await?;
        policy_rows(&rows)
    }

    async fn record_policies_held(&self, node: &str) -> Result<Vec<(String, u32, serde_json::Value)>> {
        let rows = self
            .db
            .query(
                "SELECT p.login_code, p.channel, p.policy FROM record_policy p
                 JOIN device d ON d.login_code = p.login_code
                 WHERE d.owner = $1 ORDER BY p.login_code, p.channel",
                args![node],
            )
            .await?;
        policy_rows(&rows)
    }

    async fn record_policy(&self, login_code: &str, channel: u32) -> Result<Option<serde_json::Value>> {
        let rows = self
            .db
            .query(
                "SELECT policy FROM record_policy WHERE login_code = $1 AND channel = $2",
                args![login_code, channel],
            )
            .await?;
        Ok(rows.first().map(|r| r.text(0)).transpose()?.and_then(|p| serde_json::from_str(&p).ok()))
    }

    async fn set_detection(&self, login_code: &str, channel: u32, d: &Detection) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO detect_config (login_code, channel, kind, config, set_by, set_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (login_code, channel, kind) DO UPDATE SET config = excluded.config,
                     set_by = excluded.set_by, set_at = excluded.set_at",
                args![login_code, channel, &d.kind, d.config.to_string(), &d.set_by, d.set_at],
            )
            .await?;
        Ok(())
    }

    async fn detections(&self, login_code: &str, channel: u32) -> Result<Vec<Detection>> {
        let rows = self
            .db
            .query(
                "SELECT kind, config, set_by, set_at FROM detect_config
                 WHERE login_code = $1 AND channel = $2 ORDER BY kind",
                args![login_code, channel],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Detection {
                    kind: r.text(0)?,
                    config: serde_json::from_str(&r.text(1)?).unwrap_or(serde_json::Value::Null),
                    set_by: r.text(2)?,
                    set_at: r.int(3)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(channel: u32, state: u8) -> ChannelRow {
        ChannelRow { channel, state, record_session: None, alarm: 0, changed_at: 0 }
    }

    #[tokio::test]
    async fn a_database_of_an_earlier_release_is_migrated_in_place() {
        let dir = std::env::temp_dir().join(format!("ivr-store-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            // What release 1 left: migration 1 only, one device.
            let db = rusqlite::Connection::open(dir.join("ivr.sqlite3")).unwrap();
            db.execute_batch(&format!("{}; PRAGMA user_version = 1;", MIGRATIONS[0])).unwrap();
            db.execute(
                "INSERT INTO device (login_code, name, passwd_hash, created_at) VALUES ('old', 'Old', 'x', 1)",
                [],
            )
            .unwrap();
        }
        let s = SqlStore::open(&dir).unwrap();
        let AnyDb::Sqlite(db) = &s.db else { unreachable!() };
        let v: i64 = db.lock().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        assert_eq!(s.device("old").await.unwrap().unwrap().name, "Old", "data kept");
        s.add_firmware(&Firmware {
            hardware_model: "h".into(),
            firmware_model: "1".into(),
            token: "t".into(),
            size: 1,
            uploaded_at: 1,
            sha256: Some("ab".into()),
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_totals_of_a_database_with_recordings_are_counted_when_it_is_migrated() {
        let dir = std::env::temp_dir().join(format!("ivr-store-tot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The release before the totals.
        let before = MIGRATIONS.iter().position(|m| m.contains("CREATE TABLE segment_total")).unwrap();
        {
            let db = rusqlite::Connection::open(dir.join("ivr.sqlite3")).unwrap();
            for m in &MIGRATIONS[..before] {
                db.execute_batch(m).unwrap();
            }
            db.execute_batch(&format!("PRAGMA user_version = {before};")).unwrap();
            for (i, (lc, ch, bytes)) in [("a", 0, 10), ("a", 0, 20), ("a", 1, 5), ("b", 0, 7)].into_iter().enumerate() {
                db.execute(
                    "INSERT INTO segment (login_code, channel, session_id, seq, start_ms, duration_ms, bytes, path)
                     VALUES (?1, ?2, 's', ?3, ?3, 1000, ?4, ?5)",
                    rusqlite::params![lc, ch, i as i64, bytes, format!("{i}.ts")],
                )
                .unwrap();
            }
        }
        let s = SqlStore::open(&dir).unwrap();
        assert_eq!(s.segment_totals().await.unwrap(), (42, 4));
        let a0 = s.segments("a", 0, 0, 10_000, 10).await.unwrap();
        assert!(s.delete_segment(&a0[0]).await.unwrap());
        assert_eq!(s.segment_totals().await.unwrap(), (32, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What every store does, whichever database it is on.
    pub(crate) async fn exercise(s: &SqlStore) {
        s.create_device("site-1", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "Gate", 100).await.unwrap();
        assert!(matches!(s.create_device("site-1", "x", "", 100).await, Err(StoreError::Exists(_))));
        assert!(s.password_hash("site-1").await.unwrap().unwrap().starts_with("$argon2id$"));
        assert_eq!(s.password_hash("nobody").await.unwrap(), None);
        let e1 = s.logged_in("site-1", "ivr-edge", "0.1.0", 101, "n1").await.unwrap();
        assert_eq!(s.keepalive("site-1", &[ch(0, 1), ch(1, 2)], 102, e1).await.unwrap().unwrap().len(), 2);
        assert!(s.keepalive("site-1", &[ch(0, 1), ch(1, 2)], 103, e1).await.unwrap().unwrap().is_empty(), "no change");
        assert_eq!(
            s.keepalive("site-1", &[ch(0, 1), ch(1, 1)], 104, e1).await.unwrap().unwrap(),
            vec![ChannelRow { changed_at: 104, ..ch(1, 1) }]
        );
        // last_seen is in memory until flushed, and read through.
        assert_eq!(s.device("site-1").await.unwrap().unwrap().last_seen, Some(104));
        assert_eq!(s.flush_seen().await.unwrap(), 1);
        assert_eq!(s.flush_seen().await.unwrap(), 0);
        let d = s.device("site-1").await.unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.online, d.last_seen, d.channels.len()), ("Gate", true, Some(104), 2));
        assert_eq!((d.hardware_model.as_deref(), d.node.as_deref()), (Some("ivr-edge"), Some("n1")));
        assert_eq!(s.holder("site-1").await.unwrap().as_deref(), Some("n1"));
        assert_eq!(s.holder("nobody").await.unwrap(), None);
        // Many at once: only those online; past one IN list (64 codes).
        let mut many: Vec<String> = (0..70).map(|i| format!("none-{i}")).collect();
        many.push("site-1".into());
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(s.holders(&many).await.unwrap(), vec![("site-1".to_owned(), "n1".to_owned())]);
        assert_eq!(s.holders(&["site-1", "site-1"]).await.unwrap().len(), 1, "asked twice, one answer");

        // A second login (another node) fences the first session out.
        let e2 = s.logged_in("site-1", "ivr-edge", "0.1.0", 105, "n2").await.unwrap();
        assert!(e2 > e1);
        assert_eq!(
            s.keepalive("site-1", &[ch(0, 2)], 106, e1).await.unwrap(),
            None,
            "the stale session writes nothing"
        );
        assert!(!s.set_offline("site-1", 106, e1).await.unwrap(), "nor marks it offline");
        let d = s.device("site-1").await.unwrap().unwrap();
        assert!(d.online && d.channels[0].state == 1 && d.node.as_deref() == Some("n2"));
        assert_eq!(s.keepalive("site-1", &[ch(0, 2)], 107, e2).await.unwrap().unwrap().len(), 1);

        // A node that starts sets its own devices offline, not another's.
        assert!(s.all_offline(108, "n1").await.unwrap().is_empty());
        // A node whose heartbeat stopped: its devices go offline.
        s.node_alive("n2", "http://n2", "0.1.0", 1, 100).await.unwrap();
        s.node_alive("n3", "http://n3", "0.1.0", 1, 200).await.unwrap();
        s.node_alive("n3", "http://n3", "0.2.0", 2, 200).await.unwrap();
        let nodes = s.nodes().await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[1].version.as_str(), nodes[1].bus), ("0.2.0", 2), "the last heartbeat says the version");
        let by_node = s.online_by_node().await.unwrap();
        assert!(by_node.contains(&("n2".into(), 1)) && !by_node.iter().any(|(n, _)| n == "n1"), "{by_node:?}");
        assert!(s.orphans_offline(150, 90).await.unwrap().is_empty(), "n2 is alive at 90");
        assert_eq!(s.orphans_offline(250, 150).await.unwrap(), vec!["site-1".to_owned()]);
        let d = s.device("site-1").await.unwrap().unwrap();
        assert!(!d.online && d.node.is_none() && d.channels.iter().all(|c| c.state == 0));
        assert_eq!(s.holder("site-1").await.unwrap(), None, "offline: nobody holds it");
        assert!(!s.online_by_node().await.unwrap().iter().any(|(n, _)| n == "n2"), "n2 holds nothing now");

        let e3 = s.logged_in("site-1", "ivr-edge", "0.1.0", 251, "n3").await.unwrap();
        s.keepalive("site-1", &[ch(0, 1)], 252, e3).await.unwrap().unwrap();
        s.create_device("site-2", "x", "", 100).await.unwrap();
        let page = s.devices(None, 1).await.unwrap();
        assert_eq!((page.len(), page[0].login_code.as_str(), page[0].channels.len()), (1, "site-1", 2));
        let page = s.devices(Some("site-1"), 10).await.unwrap();
        assert_eq!((page.len(), page[0].login_code.as_str(), page[0].channels.len()), (1, "site-2", 0));
        assert_eq!(s.device_count().await.unwrap(), 2);
        // A scoped caller's devices: more names than one statement takes,
        // half of them gone, in order, with their channels.
        let mut grant: Vec<String> = (0..150).map(|i| format!("grant-{i:03}")).collect();
        for lc in grant.iter().step_by(2) {
            s.create_device(lc, "x", "", 100).await.unwrap();
        }
        grant.extend(["site-1".to_owned(), "site-2".to_owned()]);
        let mine = s.devices_of(&grant).await.unwrap();
        let got: Vec<&str> = mine.iter().map(|d| d.login_code.as_str()).collect();
        let want: Vec<String> =
            (0..150).step_by(2).map(|i| format!("grant-{i:03}")).chain(["site-1".into(), "site-2".into()]).collect();
        assert_eq!(got, want);
        assert_eq!(mine[75].channels.len(), 2, "site-1's channels");
        assert!(s.devices_of(&[]).await.unwrap().is_empty());
        assert!(s.devices_of(&["nobody".to_owned()]).await.unwrap().is_empty());
        for lc in grant.iter().step_by(2).take(75) {
            assert!(s.delete_device(lc).await.unwrap());
        }
        assert!(s.rename_device("site-2", "Back door").await.unwrap());
        assert!(s.delete_device("site-2").await.unwrap());
        assert!(s.set_offline("site-1", 253, e3).await.unwrap());
        let d = s.device("site-1").await.unwrap().unwrap();
        assert!(!d.online && d.channels.iter().all(|c| c.state == 0));

        s.add_event("site-1", Some(1), "alarm", &serde_json::json!({"type": 3}), 105).await.unwrap();
        let ev = s.events(&EventFilter { kind: Some("alarm".into()), ..Default::default() }).await.unwrap();
        assert_eq!((ev.len(), ev[0].channel, ev[0].data["type"].as_i64()), (1, Some(1), Some(3)));
        assert_eq!(s.event(ev[0].id).await.unwrap().unwrap(), ev[0]);
        let none = EventFilter { login_codes: Some(vec![]), ..Default::default() };
        assert!(s.events(&none).await.unwrap().is_empty(), "an empty grant sees nothing");
        assert!(s
            .events(&EventFilter { login_code: Some("other".into()), ..Default::default() })
            .await
            .unwrap()
            .is_empty());
        // Retention: by age, then by count (the newest kept).
        for at in [1, 2, 3] {
            s.add_event("site-1", None, "old", &serde_json::json!({}), at).await.unwrap();
        }
        assert_eq!(s.trim_events(Some(3), 0).await.unwrap(), 2, "the two before t=3");
        assert_eq!(s.trim_events(None, 5).await.unwrap(), 0, "two left, fewer than the cap");
        assert_eq!(s.trim_events(None, 1).await.unwrap(), 1);
        let left = s.events(&EventFilter::default()).await.unwrap();
        assert_eq!((left.len(), left[0].kind.as_str(), left[0].at), (1, "old", 3), "the newest kept");
        assert_eq!(s.trim_events(None, 1).await.unwrap(), 0, "at the cap: nothing more goes");

        let fw = |v: &str, t: &str, at| Firmware {
            hardware_model: "ivr-edge".into(),
            firmware_model: v.into(),
            token: t.into(),
            size: 10,
            uploaded_at: at,
            sha256: None,
        };
        assert_eq!(s.add_firmware(&fw("0.2.0", "tok-0", 100)).await.unwrap(), None);
        assert_eq!(s.add_firmware(&fw("0.2.0", "tok-a", 200)).await.unwrap().as_deref(), Some("tok-0"), "replaced");
        s.add_firmware(&fw("0.3.0", "tok-b", 300)).await.unwrap();
        assert_eq!(s.latest_firmware("ivr-edge").await.unwrap().unwrap().firmware_model, "0.3.0");
        assert_eq!(s.firmware_by_token("tok-a").await.unwrap().unwrap().firmware_model, "0.2.0");
        assert!(s.latest_firmware("other").await.unwrap().is_none());
        assert_eq!(s.firmwares().await.unwrap().len(), 2);
        assert_eq!(s.delete_firmware("ivr-edge", "0.3.0").await.unwrap().as_deref(), Some("tok-b"));
        assert_eq!(s.delete_firmware("ivr-edge", "0.3.0").await.unwrap(), None, "gone");
        assert_eq!(s.latest_firmware("ivr-edge").await.unwrap().unwrap().firmware_model, "0.2.0");

        // Recordings: sessions, segments (a re-sent one indexed once), policies.
        let rs = RecordSession {
            session_id: "rs1".into(),
            login_code: "site-1".into(),
            channel: 0,
            reason: "api".into(),
            started_at: 10,
            stopped_at: None,
        };
        s.add_record_session(&rs).await.unwrap();
        assert_eq!(s.running_record_session("site-1", 0).await.unwrap(), Some(rs.clone()));
        let start = 1_700_000_000_000i64;
        for seq in 0..3u64 {
            let seg = SegmentRow {
                id: 0,
                login_code: "site-1".into(),
                channel: 0,
                session_id: "rs1".into(),
                seq,
                start_ms: start + seq as i64 * 10_000,
                duration_ms: 10_000,
                bytes: 1000 + seq,
                path: format!("p/{seq}.mp4"),
            };
            assert!(s.add_segment(&seg).await.unwrap());
            assert!(!s.add_segment(&seg).await.unwrap(), "a re-sent segment is indexed once");
        }
        let found = s.segments("site-1", 0, start + 15_000, start + 100_000, 10).await.unwrap();
        assert_eq!(found.iter().map(|x| x.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s.segment(found[0].id).await.unwrap().unwrap(), found[0]);
        assert_eq!(s.segment_totals().await.unwrap(), (3003, 3));
        assert_eq!(s.oldest_segments(1).await.unwrap()[0].seq, 0);
        assert_eq!(s.segments_ended_before("site-1", 0, start + 20_000, 10).await.unwrap().len(), 2);
        // A hold over the second segment: retention's queries pass it by,
        // and it cannot be deleted as unheld until the hold is released.
        let hold = HoldRow {
            id: 0,
            login_code: "site-1".into(),
            channel: 0,
            from_ms: start + 12_000,
            to_ms: start + 13_000,
            note: "break-in".into(),
            created_by: "user:ann".into(),
            created_at: 5,
        };
        let hid = s.add_hold(&hold).await.unwrap();
        assert_eq!(s.holds("site-1", 0, start, start + 100_000).await.unwrap(), [HoldRow { id: hid, ..hold.clone() }]);
        assert!(s.holds("site-1", 0, start + 13_000, start + 100_000).await.unwrap().is_empty(), "ends where it ends");
        assert!(s.holds("site-1", 1, start, start + 100_000).await.unwrap().is_empty(), "another channel");
        assert_eq!(s.held_totals().await.unwrap(), (1001, 1));
        let oldest: Vec<u64> = s.oldest_segments(10).await.unwrap().iter().map(|x| x.seq).collect();
        assert_eq!(oldest, [0, 2], "the held one is not retention's");
        let ended: Vec<u64> =
            s.segments_ended_before("site-1", 0, start + 30_000, 10).await.unwrap().iter().map(|x| x.seq).collect();
        assert_eq!(ended, [0, 2]);
        assert!(!s.delete_unheld_segment(&found[0]).await.unwrap(), "held");
        assert!(!s.delete_hold("site-1", 1, hid).await.unwrap(), "not that channel's");
        assert!(s.delete_hold("site-1", 0, hid).await.unwrap());
        assert!(!s.delete_hold("site-1", 0, hid).await.unwrap(), "released once");
        assert_eq!(s.held_totals().await.unwrap(), (0, 0));
        assert!(s.delete_unheld_segment(&found[0]).await.unwrap());
        assert!(!s.delete_segment(&found[0]).await.unwrap(), "gone already");
        let paths = s.segment_paths_after(0, 10).await.unwrap();
        assert_eq!(paths.len(), 2);
        assert_eq!(s.segment_paths_after(paths[0].0, 10).await.unwrap(), paths[1..], "a page after the first");
        assert!(s.segment_paths_after(paths[1].0, 10).await.unwrap().is_empty());
        assert_eq!(s.segment_paths_after(0, 1).await.unwrap(), paths[..1]);
        assert_eq!(s.segment_totals().await.unwrap(), (2002, 2), "the totals follow deletions, counted once");
        assert!(s.stop_record_session("rs1", 20).await.unwrap());
        assert!(!s.stop_record_session("rs1", 21).await.unwrap());
        assert_eq!(s.record_session("rs1").await.unwrap().unwrap().stopped_at, Some(20));
        let policy = serde_json::json!({"mode": "continuous"});
        s.set_record_policy("site-1", 0, &policy).await.unwrap();
        s.set_record_policy("site-1", 0, &policy).await.unwrap();
        assert_eq!(s.record_policy("site-1", 0).await.unwrap(), Some(policy));
        assert_eq!(s.record_policies().await.unwrap().len(), 1);
        // A node reads the policies of the devices it holds, only.
        assert!(s.record_policies_held("n4").await.unwrap().is_empty(), "offline: nobody holds it");
        s.logged_in("site-1", "ivr-edge", "0.1.0", 400, "n4").await.unwrap();
        let held = s.record_policies_held("n4").await.unwrap();
        assert_eq!((held.len(), held[0].0.as_str(), held[0].1), (1, "site-1", 0));
        assert!(s.record_policies_held("n3").await.unwrap().is_empty(), "another node's devices");
        let motion = |sens: u8, by: &str, at: i64| Detection {
            kind: "motion".into(),
            config: serde_json::json!({"channel": 0, "enable": true, "sensitivity": sens, "delay": 5}),
            set_by: by.into(),
            set_at: at,
        };
        assert!(s.detections("site-1", 0).await.unwrap().is_empty());
        s.set_detection("site-1", 0, &motion(40, "user:a", 10)).await.unwrap();
        s.set_detection("site-1", 0, &motion(80, "user:b", 11)).await.unwrap();
        assert_eq!(s.detections("site-1", 0).await.unwrap(), vec![motion(80, "user:b", 11)], "the last one kept");
        assert!(s.detections("site-1", 1).await.unwrap().is_empty(), "per channel");

        crate::accounts::tests::exercise(s).await;
        assert!(s.delete_device("site-1").await.unwrap());
        assert!(s.device("site-1").await.unwrap().is_none());
        assert!(s.detections("site-1", 0).await.unwrap().is_empty(), "gone with the device");
    }

    #[tokio::test]
    async fn sqlite_keeps_everything_and_a_restart_finds_it() {
        let dir = std::env::temp_dir().join(format!("ivr-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SqlStore::open(&dir).unwrap();
            exercise(&s).await;
            s.create_device("kept", "h", "Kept", 1).await.unwrap();
            let e = s.logged_in("kept", "m", "1", 2, "local").await.unwrap();
            s.keepalive("kept", &[ch(0, 1)], 3, e).await.unwrap();
            s.flush_seen().await.unwrap();
        }
        let mode = std::fs::metadata(dir.join("ivr.sqlite3")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        // A restart keeps everything; what a start does after a kill:
        // everything this node held goes offline, once.
        let s = SqlStore::open(&dir).unwrap();
        let d = s.device("kept").await.unwrap().unwrap();
        assert_eq!((d.online, d.last_seen, d.channels.len()), (true, Some(3), 1));
        assert_eq!(s.all_offline(4, "local").await.unwrap(), vec!["kept".to_owned()]);
        assert!(s.all_offline(4, "local").await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same migrations and the same statements on a real PostgreSQL
    /// (Debian's, started here on a free port).
    #[tokio::test]
    async fn postgresql_behaves_like_sqlite() {
        let pg = ivr_testkit::services::Postgres::start();
        let url = pg.database("store_test");
        let s = SqlStore::postgres(&url).await.unwrap();
        assert_eq!(s.kind(), "postgres");
        exercise(&s).await;
        // Migrations run once: a second node finds nothing to do.
        let again = SqlStore::postgres(&url).await.unwrap();
        assert_eq!(again.device_count().await.unwrap(), 0);
        // The PostgreSQL-only migration ran: device pages keep room.
        let rows =
            s.db.query("SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'device'", args![]).await;
        assert_eq!(rows.unwrap()[0].text(0).unwrap(), "fillfactor=70");
        let e = SqlStore::postgres("postgres://ivr@127.0.0.1:1/none").await.err().unwrap().to_string();
        assert!(e.contains("cannot connect to postgres://ivr@"), "{e}");
    }
}
