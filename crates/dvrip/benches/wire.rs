//! Codec and demuxer throughput, with memcpy of the same bytes as the
//! baseline the demuxer is held to (within 2×).
//! `cargo bench -p dvrip --bench wire`

use bytes::{Bytes, BytesMut};
use chrono::NaiveDate;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dvrip::media::{self, Demuxer, VideoCodec};
use dvrip::Header;
use dvrip::{DvripCodec, Packet};
use tokio_util::codec::{Decoder, Encoder};

/// A camera-like stream: GOPs of one 60 KB I-frame and 24 P-frames of 3 KB.
fn media_stream(gops: usize) -> Bytes {
    let t = NaiveDate::from_ymd_opt(2024, 5, 17).unwrap().and_hms_opt(10, 0, 0).unwrap();
    let mut s = BytesMut::new();
    let i = vec![0x11u8; 60_000];
    let p = vec![0x22u8; 3_000];
    for _ in 0..gops {
        media::write_video(&mut s, VideoCodec::H265, true, 2592, 1944, 25, &t, &i);
        for _ in 0..24 {
            media::write_video(&mut s, VideoCodec::H265, false, 0, 0, 0, &t, &p);
        }
    }
    s.freeze()
}

/// The stream as the wire carries it: 1412 packets of at most 16 KiB.
fn packets(stream: &Bytes) -> Bytes {
    let mut c = DvripCodec::default();
    let mut out = BytesMut::new();
    for (n, chunk) in stream.chunks(16 * 1024).enumerate() {
        let h = Header::new(dvrip::ids::OPMONITOR_DATA, 1, n as u32, chunk.len());
        c.encode(Packet::new(h, Bytes::copy_from_slice(chunk)), &mut out).unwrap();
    }
    out.freeze()
}

fn wire(c: &mut Criterion) {
    let stream = media_stream(40);
    let wire = packets(&stream);

    let mut g = c.benchmark_group("dvrip");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("memcpy (baseline)", |b| {
        let mut dst = vec![0u8; stream.len()];
        b.iter(|| {
            dst.copy_from_slice(black_box(&stream));
            black_box(&dst);
        })
    });
    g.bench_function("demux whole stream", |b| {
        b.iter(|| {
            let mut d = Demuxer::new();
            d.feed(black_box(&stream));
            let mut n = 0;
            while let Some(f) = d.next_frame() {
                n += f.payload.len();
            }
            black_box(n)
        })
    });
    g.bench_function("demux in 16 KiB packets", |b| {
        b.iter(|| {
            let mut d = Demuxer::new();
            let mut n = 0;
            for chunk in black_box(&stream).chunks(16 * 1024) {
                d.feed(chunk);
                while let Some(f) = d.next_frame() {
                    n += f.payload.len();
                }
            }
            black_box(n)
        })
    });
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("codec decode 16 KiB packets", |b| {
        b.iter(|| {
            let mut c = DvripCodec::default();
            let mut buf = BytesMut::from(black_box(&wire[..]));
            let mut n = 0;
            while let Some(p) = c.decode(&mut buf).unwrap() {
                n += p.payload.len();
            }
            black_box(n)
        })
    });
    g.bench_function("codec + demux (a live stream end to end)", |b| {
        b.iter(|| {
            let mut c = DvripCodec::default();
            let mut buf = BytesMut::from(black_box(&wire[..]));
            let mut d = Demuxer::new();
            let mut n = 0;
            while let Some(p) = c.decode(&mut buf).unwrap() {
                d.feed(&p.payload);
                while let Some(f) = d.next_frame() {
                    n += f.payload.len();
                }
            }
            black_box(n)
        })
    });
    g.finish();

    let body = dvrip::json::encode_body(&serde_json::json!({
        "Name": "General.General", "Ret": 100, "SessionID": "0x00000011",
        "General.General": {"AutoLogout": 0, "FontSize": 24, "LocalNo": 0, "MachineName": "LocalHost", "OverWrite": "OverWrite", "ScreenAutoShutdown": 10, "ScreenSaveTime": 0, "VideoOutPut": "Auto"}
    }));
    let mut g = c.benchmark_group("dvrip json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse a config reply", |b| {
        b.iter(|| black_box(dvrip::json::parse_body(black_box(&body)).unwrap()))
    });
    g.bench_function("sofia hash", |b| b.iter(|| black_box(dvrip::sofia_hash(black_box("admin")))));
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
