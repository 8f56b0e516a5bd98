//! Device quirks from the notes, each played by a scripted fake device over
//! a real socket, and the client's tolerance of it. One test per quirk.

use bytes::{Bytes, BytesMut};
use dvrip::client::{Client, ClientConfig, FileQuery, PlaybackTarget, SocketMode};
use dvrip::ids;
use dvrip::Header;
use dvrip::{DvripCodec, Packet};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// What the fake device answers to one request: packets to send back.
type Script = fn(&Packet, &Value) -> Vec<Packet>;

fn login_reply(req: &Packet) -> Vec<Packet> {
    let body = json!({"AliveInterval": 20, "ChannelNum": 1, "DeviceType ": "IPC", "ExtraChannel": 0, "Ret": 100, "SessionID": "0x11"});
    vec![json_packet(ids::LOGIN_RESP, req.header.seq, &body, b"\n\0")]
}

fn json_packet(id: u16, seq: u32, body: &Value, trailer: &[u8]) -> Packet {
    let mut b = BytesMut::from(serde_json::to_vec(body).unwrap().as_slice());
    b.extend_from_slice(trailer);
    Packet::new(Header::new(id, 0x11, seq, 0), b.freeze())
}

/// A device that logs in anyone and runs `script` for everything else.
async fn fake(script: Script) -> Client {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut f = Framed::new(s, DvripCodec::default());
                while let Some(Ok(p)) = f.next().await {
                    let body = dvrip::json::parse_body(&p.payload).unwrap_or(Value::Null);
                    let out = if p.msg_id() == ids::LOGIN_REQ { login_reply(&p) } else { script(&p, &body) };
                    for o in out {
                        if f.send(o).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let mut cfg = ClientConfig::new(addr.to_string(), "admin", "");
    cfg.timeout = Duration::from_secs(3);
    Client::new(cfg)
}

#[tokio::test]
async fn reply_with_seq_plus_one_and_newline_only_trailer() {
    // Some firmware answers with the request's seq + 1 and ends bodies in "\n".
    let c = fake(|p, _| {
        let body =
            json!({"Name": "OPTimeQuery", "OPTimeQuery": "2020-01-02 03:04:05", "Ret": 100, "SessionID": "0x11"});
        vec![json_packet(ids::OPTIMEQUERY_RESP, p.header.seq + 1, &body, b"\n")]
    })
    .await;
    let t = c.time().await.unwrap().unwrap();
    assert_eq!(dvrip::json::format_time(&t), "2020-01-02 03:04:05");
}

#[tokio::test]
async fn reply_with_an_unrelated_seq_is_still_taken() {
    let c = fake(|_, _| {
        let body =
            json!({"Name": "OPTimeQuery", "OPTimeQuery": "0000-00-00 00:00:00", "Ret": 100, "SessionID": "0x11"});
        vec![json_packet(ids::OPTIMEQUERY_RESP, 0xDEAD, &body, b"")]
    })
    .await;
    assert_eq!(c.time().await.unwrap(), None, "the unset clock reads as None");
}

#[tokio::test]
async fn large_reply_in_fragments() {
    // A config reply bigger than the vendor's 16 KiB packet arrives in parts.
    let c = fake(|p, _| {
        let big: Vec<Value> = (0..800).map(|i| json!({"Name": format!("user{i}"), "Memo": "x".repeat(60)})).collect();
        let body = json!({"Name": "Users", "Ret": 100, "SessionID": "0x11", "Users": big});
        let one = json_packet(ids::USERS_GET_RESP, p.header.seq, &body, b"\n\0");
        assert!(one.payload.len() > 3 * 16 * 1024);
        Packet::fragmented(one.header, one.payload, 16 * 1024)
    })
    .await;
    assert_eq!(c.users().await.unwrap().len(), 800);
}

#[tokio::test]
async fn file_list_under_the_vendor_key_file_list() {
    // The vendor's example names the list "FileList"; devices say "OPFileQuery".
    let c = fake(|p, _| {
        let body = json!({"Name": "OPFileQuery", "Ret": 110, "SessionID": "0x11", "FileList": [
            {"BeginTime": "2024-01-01 00:00:00", "EndTime": "2024-01-01 00:10:00", "DiskNo": 0, "SerialNo": 0, "FileLength": "0x00000400", "FileName": "/idea0/2024-01-01/001/00.00.00-00.10.00[R][@1][0].h264"}]});
        vec![json_packet(ids::FILESEARCH_RSP, p.header.seq, &body, b"\n\0")]
    })
    .await;
    let t = dvrip::json::parse_time("2024-01-01 00:00:00").unwrap();
    let files = c.files(&FileQuery::new(0, t, t + chrono::Duration::hours(1))).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].length_kib(), Some(1024));
}

#[tokio::test]
async fn log_list_under_the_key_log_list() {
    let c = fake(|p, body| {
        let pos = body["OPLogQuery"]["LogPosition"].as_u64().unwrap_or(0);
        let list: Vec<Value> = if pos == 0 {
            (0..3).map(|i| json!({"Position": i, "Time": "2024-01-01 00:00:00", "Type": "LogIn", "User": "admin", "Data": ""})).collect()
        } else {
            vec![]
        };
        vec![json_packet(ids::LOGSEARCH_RSP, p.header.seq, &json!({"Name": "OPLogQuery", "Ret": 100, "SessionID": "0x11", "LogList": list}), b"\n\0")]
    })
    .await;
    let t = dvrip::json::parse_time("2024-01-01 00:00:00").unwrap();
    assert_eq!(c.logs(&t, &t, "LogAll").await.unwrap().len(), 3);
}

#[tokio::test]
async fn download_ended_by_an_empty_packet_without_the_end_flag() {
    let c = fake(|p, body| match p.msg_id() {
        ids::PLAY_CLAIM => vec![json_packet(
            ids::PLAY_CLAIM_RSP,
            p.header.seq,
            &json!({"Name": "OPPlayBack", "Ret": 100, "SessionID": "0x11"}),
            b"\n\0",
        )],
        ids::PLAY_REQ if body["OPPlayBack"]["Action"] == "DownloadStart" => {
            let mut v: Vec<Packet> = (0..3)
                .map(|i| Packet::new(Header::new(ids::DOWNLOAD_DATA, 0x11, i, 0), Bytes::from(vec![i as u8; 1000])))
                .collect();
            v.push(Packet::new(Header::new(ids::DOWNLOAD_DATA, 0x11, 3, 0), Bytes::new()));
            v
        }
        _ => vec![],
    })
    .await;
    let entry = dvrip::messages::FileEntry {
        begin: "2024-01-01 00:00:00".into(),
        end: "2024-01-01 00:01:00".into(),
        disk: 0,
        serial: 0,
        length: "0x00000003".into(),
        name: "/idea0/x.h264".into(),
    };
    let mut s = c.download(PlaybackTarget::File(entry), SocketMode::Single).await.unwrap();
    let mut n = 0;
    while let Some(ch) = tokio::time::timeout(Duration::from_secs(3), s.next_chunk()).await.unwrap() {
        n += ch.len();
    }
    assert_eq!(n, 3000);
}

#[tokio::test]
async fn raw_jpeg_snapshot_over_several_packets_and_no_end_flag() {
    // Raw JPEG (FF D8 …), split in packets, no end flag: complete when the
    // device goes quiet.
    let c = fake(|p, _| {
        if p.msg_id() != ids::NET_SNAP_REQ {
            return vec![];
        }
        let jpeg = ivr_sim::clips::SNAPSHOT_JPEG;
        jpeg.chunks(3000)
            .map(|ch| Packet::new(Header::new(ids::NET_SNAP_RSP, 0x11, p.header.seq, 0), Bytes::copy_from_slice(ch)))
            .collect()
    })
    .await;
    assert_eq!(&c.snapshot(0).await.unwrap()[..], ivr_sim::clips::SNAPSHOT_JPEG);
}

#[tokio::test]
async fn nvr_refusing_a_snapshot_with_ret_108() {
    let c = fake(|p, _| {
        vec![json_packet(
            ids::NET_SNAP_RSP,
            p.header.seq,
            &json!({"Name": "OPSNAP", "Ret": 108, "SessionID": "0x11"}),
            b"\n\0",
        )]
    })
    .await;
    let e = c.snapshot(0).await.unwrap_err();
    assert!(e.to_string().contains("Ret 108: time out"), "{e}");
}
