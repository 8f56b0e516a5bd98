//! IVR RPC packet parse and write on the packets a cloud and an edge
//! exchange most: a GetNetConfig answer (what `ivr bench ivc` asks every
//! device), a Keepalive request, an alarm event. Side by side with
//! serde_json parsing the same text into a `Value` tree, which is the
//! least any parser that builds the whole document does.
//! `cargo bench -p ivr-rpc --bench message`

/// The allocator the ivr binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ivr_rpc::{Message, Resp};
use serde_json::json;

fn packets() -> Vec<(&'static str, String)> {
    let net = Message::Success {
        seq: 812,
        resp: Resp::of(&json!([{
            "name": "eth0", "ip": "192.168.1.64", "gateway": "192.168.1.1", "netmask": "255.255.255.0",
            "dns1": "192.168.1.1", "dns2": "8.8.8.8", "mac": "02:00:00:00:00:07", "dhcp": false,
        }])),
    };
    let keepalive = Message::Request {
        method: "Keepalive".into(),
        params: Some(json!({"state": 1, "channels": [{"channel": 0, "state": 1}, {"channel": 1, "state": 2}]})),
        seq: 40,
    };
    let alarm = Message::Request {
        method: "AlarmNotify".into(),
        params: Some(json!({"channel": 0, "type": 3, "state": "start", "desc": "door"})),
        seq: 41,
    };
    vec![("GetNetConfig answer", net.to_text()), ("Keepalive", keepalive.to_text()), ("AlarmNotify", alarm.to_text())]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ivr-rpc");
    for (name, text) in packets() {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("parse {name}"), |b| b.iter(|| Message::parse(black_box(&text)).unwrap()));
        g.bench_function(format!("serde_json Value {name}"), |b| {
            b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap())
        });
        let m = Message::parse(&text).unwrap();
        g.bench_function(format!("write {name}"), |b| b.iter(|| black_box(&m).to_text()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
