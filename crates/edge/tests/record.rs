//! StartCloudRecord on a simulated channel, against a small HTTP server
//! speaking the callback protocol of docs/ivr-rpc.md (POST cbk_url → URL,
//! PUT the segment): segments of seg_duration with the pre-record before
//! the call, each a playable MPEG-TS judged by ffprobe, a failed callback
//! retried, StopCloudRecord finishing and uploading the last segment.

use ivr_edge::{ChannelBackend, SimChannel};
use ivr_rpc::catalogue::{IvtRequest, Quality, StartCloudRecord};
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;
use common::server;

fn params(cbk: &str, session: &str) -> StartCloudRecord {
    StartCloudRecord {
        session_id: session.into(),
        channel: 0,
        quality: Quality::Sd,
        max_bitrate: 0,
        seg_duration: 2,
        seg_max_size: 4 << 20,
        seg_max_count: 10,
        prerecord_seconds: 3,
        start_ts: 0,
        cbk_url: cbk.into(),
    }
}

fn ffprobe(path: &std::path::Path) -> (u64, f64) {
    common::ffprobe_seconds(path, 640)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_with_pre_record_are_uploaded_and_play() {
    let (base, store) = server().await;
    store.lock().unwrap().fail_next_callbacks.store(1, Ordering::SeqCst);
    let ch = SimChannel::new(0);
    let session = "abcdefghijklmnopqrstuv";
    let started = chrono::Utc::now().timestamp();
    ch.request_now(&IvtRequest::StartCloudRecord(params(&format!("{base}/cbk"), session))).unwrap();
    assert_eq!(ch.record_session().as_deref(), Some(session), "Keepalive shows the session");
    // The same session again is success and changes nothing.
    ch.request_now(&IvtRequest::StartCloudRecord(params(&format!("{base}/cbk"), session))).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = ch.record_stats().unwrap();
    assert!(stats.upload_failures >= 1 && stats.uploaded >= 1, "the refused callback was retried: {stats:?}");
    ch.request_now(&IvtRequest::StopCloudRecord { session_id: session.into(), channel: 0 }).unwrap();
    assert_eq!(ch.record_session(), None);
    // Pre-record (3 s, GOP-aligned) + ~4 s recorded: wait for the last one.
    let mut total = 0.0;
    for _ in 0..100 {
        total = store.lock().unwrap().stored.iter().map(|(d, _)| d["duration"].as_f64().unwrap()).sum::<f64>();
        if total >= 6.5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = std::mem::take(&mut store.lock().unwrap().stored);
    assert!((6.5..=9.5).contains(&total), "{total} s recorded");
    let dir = std::env::temp_dir().join(format!("ivr-edge-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = Vec::new();
    for (i, (desc, ts)) in stored.iter().enumerate() {
        assert_eq!(desc["seq"], i as u64, "in order, none missing: {desc}");
        assert_eq!(desc["session_id"], session);
        assert_eq!(desc["size"], ts.len() as u64, "the size announced is the size sent");
        let p = dir.join(format!("{i}.ts"));
        std::fs::write(&p, ts).unwrap();
        let (_, secs) = ffprobe(&p);
        let d = desc["duration"].as_f64().unwrap();
        assert!((secs - d).abs() < 0.05, "segment {i}: {secs} s of frames, {d} s announced");
        if i + 1 < stored.len() {
            assert!((2.0..=3.0).contains(&d), "segment {i}: {d} s for seg_duration 2 (cut at a keyframe)");
        }
        all.extend_from_slice(ts);
    }
    // The first frame is from before the call: the pre-record.
    let first = stored[0].0["start_ts"].as_i64().unwrap();
    assert!((started - 5..=started - 3).contains(&first), "first segment at {first}, the call at {started}");
    let p = dir.join("all.ts");
    std::fs::write(&p, &all).unwrap();
    let (frames, _) = ffprobe(&p);
    assert!((total * 25.0 - frames as f64).abs() < 1.0, "{frames} frames in {total} s");
    ivr_testkit::decodes_cleanly(&p).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_callback_url_that_is_not_http_is_refused() {
    let ch = SimChannel::new(0);
    let e = ch.request_now(&IvtRequest::StartCloudRecord(params("ftp://x/y", "abcdefghijklmnopqrstuv"))).unwrap_err();
    assert!(e.msg.contains("params.cbk_url"), "{e:?}");
    assert_eq!(ch.record_session(), None);
}
