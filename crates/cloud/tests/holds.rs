//! Holds over HTTP: an operator keeps a range of a channel's recording, and
//! retention (the byte quota and a channel's days) deletes around it until
//! the hold is released; erasing a range is refused while a hold covers
//! it; what viewers and bad requests get.

mod common;

use common::{api, edge, http, start_cloud_with};
use ivr_cloud::{CloudConfig, SegmentRow, Store};
use ivr_testkit::wait_until;
use serde_json::{json, Value};
use std::path::Path;

const SEG: u64 = 1000;

/// Indexes one stored segment of `SEG` bytes (file and row), as an upload
/// would leave it.
async fn segment(store: &impl Store, dir: &Path, seq: u64, start_ms: i64) {
    let path = format!("site-h/0/{seq}.ts");
    let file = dir.join("recordings").join(&path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, vec![0x47; SEG as usize]).unwrap();
    let row = SegmentRow {
        id: 0,
        login_code: "site-h".into(),
        channel: 0,
        session_id: "s1".into(),
        seq,
        start_ms,
        duration_ms: 10_000,
        bytes: SEG,
        path,
    };
    assert!(store.add_segment(&row).await.unwrap());
}

async fn seqs(store: &impl Store) -> Vec<u64> {
    store.segments("site-h", 0, 0, i64::MAX / 2, 1000).await.unwrap().iter().map(|s| s.seq).collect()
}

fn on_disk(dir: &Path, seq: u64) -> bool {
    dir.join(format!("recordings/site-h/0/{seq}.ts")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_keep_their_range_from_retention_until_released() {
    let dir = std::env::temp_dir().join(format!("ivr-holds-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A quota of two and a half segments.
    let (addr, cloud, _server) =
        start_cloud_with(&dir, |c| CloudConfig { recordings_max_bytes: Some(2 * SEG + SEG / 2), ..c }).await;
    let (s, _) =
        api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "site-h", "login_passwd": "site-h-pw"}))).await;
    assert_eq!(s, 201);
    let (e, _) = edge(addr, "site-h", "site-h-pw");
    let run = tokio::spawn(e.run());
    wait_until("the device lists channel 0", async || {
        api(addr, "GET", "/api/v1/devices/site-h", None).await.1["channels"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;

    let store = cloud.store();
    let base = 1_700_000_000_000i64;
    for seq in 0..5 {
        segment(store.as_ref(), &dir, seq, base + seq as i64 * 10_000).await;
    }
    let holds = "/api/v1/devices/site-h/channels/0/holds";
    let secs = |ms: i64| ms as f64 / 1000.0;

    // Bad requests say what was wrong.
    for (body, want) in [
        (json!({"from": secs(base + 15_000), "to": secs(base + 12_000)}), "before"),
        (json!({"from": "yesterday", "to": secs(base)}), "from"),
        (json!({"from": secs(base), "to": secs(base + 1), "note": "x".repeat(501)}), "note"),
        (json!({"from": secs(base), "to": secs(base + 1), "note": "a\u{7}b"}), "control"),
        (json!({"from": secs(base), "to": secs(base + 1), "colour": "red"}), "colour"),
    ] {
        let (s, e) = api(addr, "POST", holds, Some(body.clone())).await;
        assert_eq!(s, 400, "{body} → {e}");
        assert!(e["error"].as_str().unwrap().contains(want), "{body} → {e}");
    }
    let range = json!({"from": secs(base + 12_000), "to": secs(base + 15_000), "note": "case 42: the van"});
    assert_eq!(api(addr, "POST", "/api/v1/devices/site-h/channels/7/holds", Some(range.clone())).await.0, 404);
    assert_eq!(api(addr, "POST", "/api/v1/devices/nobody/channels/0/holds", Some(range.clone())).await.0, 404);

    // A viewer sees holds but may not make or release one.
    let (s, t) = api(
        addr,
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "wall", "role": "viewer", "devices": ["site-h"], "expires": "1d"})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let viewer = t["token"].as_str().unwrap().to_owned();
    let body = range.to_string();
    assert_eq!(http(addr, "POST", holds, Some(&viewer), Some(body.as_bytes())).await.0, 403);

    // The hold: it keeps segment 1 (12–15 s lies in 10–20 s).
    let (s, h) = api(addr, "POST", holds, Some(range.clone())).await;
    assert_eq!(s, 201, "{h}");
    assert_eq!((h["segments"].as_u64(), h["bytes"].as_u64()), (Some(1), Some(SEG)), "{h}");
    assert_eq!((h["note"].as_str(), h["created_by"].as_str()), (Some("case 42: the van"), Some("admin-token")));
    let id = h["id"].as_i64().unwrap();
    let (s, list) = http(addr, "GET", holds, Some(&viewer), None).await;
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!((s, list["holds"].as_array().map(Vec::len), &list["holds"][0]["id"]), (200, Some(1), &json!(id)));
    let (_, rec) =
        api(addr, "GET", &format!("/api/v1/devices/site-h/channels/0/recordings?from={}", secs(base)), None).await;
    assert_eq!(rec["holds"][0]["from"], json!(secs(base + 12_000)), "{rec}");

    // Over the quota (5 segments, room for 2.5): the oldest unheld go
    // (0, 2, 3), the held one stays on disk and in the index.
    cloud.sweep().await.unwrap();
    assert_eq!(seqs(store.as_ref()).await, [1, 4]);
    assert!(on_disk(&dir, 1) && !on_disk(&dir, 0) && !on_disk(&dir, 2) && !on_disk(&dir, 3));
    let (_, st) = api(addr, "GET", "/api/v1/stats", None).await;
    let r = &st["recordings"];
    assert_eq!((r["held_bytes"].as_u64(), r["held_segments"].as_u64()), (Some(SEG), Some(1)), "{st}");
    assert_eq!((r["deleted"].as_u64(), r["held_over_quota_bytes"].as_u64()), (Some(3), Some(0)), "{st}");

    // Everything held and over the quota: nothing deleted, the excess said.
    let (s, all) = api(addr, "POST", holds, Some(json!({"from": secs(base), "to": secs(base + 100_000)}))).await;
    assert_eq!(s, 201, "{all}");
    for seq in 5..7 {
        segment(store.as_ref(), &dir, seq, base + seq as i64 * 10_000).await;
    }
    assert_eq!(cloud.sweep().await.unwrap(), 0);
    assert_eq!(seqs(store.as_ref()).await, [1, 4, 5, 6]);
    let (_, st) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(st["recordings"]["held_over_quota_bytes"].as_u64(), Some(4 * SEG - (2 * SEG + SEG / 2)), "{st}");

    // Released (by an operator's right, not a viewer's): the quota applies
    // again around the first hold, which still keeps segment 1.
    let all = format!("{holds}/{}", all["id"]);
    assert_eq!(http(addr, "DELETE", &all, Some(&viewer), None).await.0, 403);
    let (s, r) = api(addr, "DELETE", &all, None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(api(addr, "DELETE", &all, None).await.0, 404, "released once");
    cloud.sweep().await.unwrap();
    assert_eq!(seqs(store.as_ref()).await, [1, 6]);
    let (_, st) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(st["recordings"]["held_over_quota_bytes"].as_u64(), Some(0), "{st}");

    // A channel's days: a held old segment outlives them, an unheld one not.
    let (s, p) = api(
        addr,
        "PUT",
        "/api/v1/devices/site-h/channels/0/record-policy",
        Some(json!({"mode": "off", "retention_days": 1})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    cloud.sweep().await.unwrap();
    assert_eq!(seqs(store.as_ref()).await, [1], "segment 6 is days old and unheld");
    assert_eq!(api(addr, "DELETE", &format!("{holds}/{id}"), None).await.0, 200);
    cloud.sweep().await.unwrap();
    assert!(seqs(store.as_ref()).await.is_empty() && !on_disk(&dir, 1));

    // Erasing a range (admins): refused while a hold overlaps it, then
    // every overlapping segment goes, row and file.
    let p = json!({"mode": "off"}); // kept forever: only the erasure deletes
    assert_eq!(api(addr, "PUT", "/api/v1/devices/site-h/channels/0/record-policy", Some(p)).await.0, 200);
    let at = base + 1_000_000;
    for seq in 20..23 {
        segment(store.as_ref(), &dir, seq, at + (seq as i64 - 20) * 10_000).await;
    }
    let (s, k) = api(addr, "POST", holds, Some(json!({"from": secs(at + 12_000), "to": secs(at + 13_000)}))).await;
    assert_eq!(s, 201, "{k}");
    let erase =
        format!("/api/v1/devices/site-h/channels/0/recordings?from={}&to={}", secs(at + 5_000), secs(at + 25_000));
    let (s, e) = api(addr, "DELETE", &erase, None).await;
    assert_eq!(s, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains(&k["id"].to_string()), "{e}");
    assert_eq!(http(addr, "DELETE", &erase, Some(&viewer), None).await.0, 403);
    let (s, e) = api(addr, "DELETE", "/api/v1/devices/site-h/channels/0/recordings", None).await;
    assert!(s == 400 && e["error"].as_str().unwrap().contains("from and to"), "{s} {e}");
    assert_eq!(api(addr, "DELETE", &format!("{holds}/{}", k["id"]), None).await.0, 200);
    let (s, e) = api(addr, "DELETE", &erase, None).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!((e["segments"].as_u64(), e["bytes"].as_u64()), (Some(3), Some(3 * SEG)), "{e}");
    assert_eq!((e["from"].as_f64(), e["to"].as_f64()), (Some(secs(at)), Some(secs(at + 30_000))), "{e}");
    assert!(seqs(store.as_ref()).await.is_empty() && !(20..23).any(|q| on_disk(&dir, q)));

    // The audit log names who made and released holds.
    let (_, audit) = api(addr, "GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|a| a["action"].as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "hold_created").count(), 3, "{audit}");
    assert_eq!(actions.iter().filter(|a| **a == "hold_released").count(), 3, "{audit}");
    assert_eq!(actions.iter().filter(|a| **a == "recordings_erased").count(), 1, "{audit}");
    run.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
