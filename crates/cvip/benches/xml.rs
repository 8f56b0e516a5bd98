//! XML-RPC parse and write throughput on the messages a CVIP session is
//! made of: a listProperties answer (structs of strings and uints), a
//! media query page, a notify, and a seed example that needs repairs.
//! `cargo bench -p cvip --bench xml`

/// The allocator the ivr binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cvip::{parse, write, Message};
use cvip::{Struct, Value};

fn list_properties() -> Message {
    let props = (0..40)
        .map(|i| {
            Struct::new()
                .with("id", format!("videoEncoderProperty{i}"))
                .with("name", "Target bit rate & more")
                .with("value", Value::UInt(4096 + i))
                .with("validation", "range")
                .with("range", "64,16384,64")
                .with("access", "rw")
                .with("units", "kbit/s")
                .into()
        })
        .collect();
    Message::Response { params: vec![Value::Array(props)] }
}

fn media_page() -> Message {
    let items = (0..16)
        .map(|i| {
            Struct::new()
                .with("GUID", "00000001-0000-0000-0001EC901E30B")
                .with("ClipID", i)
                .with("ClipType", 1)
                .with("ClipTime", "20261121101500")
                .with("Size", 744680)
                .with("Persistent", true)
                .with("Ratio", 0.75)
                .into()
        })
        .collect();
    Message::Response {
        params: vec![Struct::new().with("IsLastPage", false).with("Items", Value::Array(items)).into()],
    }
}

fn notify() -> Message {
    Message::Call {
        method: "cviEvent.notify".into(),
        params: vec![Struct::new()
            .with("Type", 4)
            .with("Id", 1)
            .with("Time", "2026-11-21 10:15:00")
            .with("EventGUID", "0EAC80FE-142E-13A2-A55D-65BC701EB223")
            .with("info", 1)
            .into()],
    }
}

fn xml(c: &mut Criterion) {
    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/seed/15_service_listparameters_response.xml"))
        .unwrap();
    for (name, msg) in [("listProperties", list_properties()), ("mediaPage", media_page()), ("notify", notify())] {
        let text = write(&msg);
        let mut g = c.benchmark_group(format!("xml/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("parse", |b| b.iter(|| parse(black_box(text.as_bytes())).unwrap()));
        g.bench_function("write", |b| b.iter(|| write(black_box(&msg))));
        g.finish();
    }
    let mut g = c.benchmark_group("xml/seed-malformed");
    g.throughput(Throughput::Bytes(seed.len() as u64));
    g.bench_function("parse", |b| b.iter(|| parse(black_box(&seed)).unwrap()));
    g.finish();
}

criterion_group!(benches, xml);
criterion_main!(benches);
