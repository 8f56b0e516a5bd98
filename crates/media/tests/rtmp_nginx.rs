//! The RTMP publisher against a real RTMP server: Debian's nginx with
//! libnginx-mod-rtmp (scripts/test.sh installs them), started here on a
//! loopback port with the config in tests/interop/nginx-rtmp.conf. The
//! fixture is published at its frame rate; ffmpeg plays it back from nginx
//! and ffprobe judges what came through.

use bytes::Bytes;
use ivr_media::annexb::access_units;
use ivr_media::rtmp::{Publisher, RtmpError};
use ivr_media::{ticks, Codec, Frame};
use ivr_sim::clips;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Nginx(std::process::Child, std::path::PathBuf);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn nginx() -> (Nginx, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (nginx_on(port), port)
}

fn nginx_on(port: u16) -> Nginx {
    let dir = std::env::temp_dir().join(format!("ivr-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = include_str!("../../../tests/interop/nginx-rtmp.conf").replace("@PORT@", &port.to_string());
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx libnginx-mod-rtmp; scripts/test.sh does)");
    let n = Nginx(child, dir);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx did not listen on {port}: {}", std::fs::read_to_string(n.1.join("error.log")).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_nginx_and_play_back() {
    let (ng, port) = nginx();
    let url = format!("rtmp://127.0.0.1:{port}/live/cam");
    let units = access_units(&Bytes::from_static(clips::H264_640X360), Codec::H264);
    let mut p = Publisher::connect(&url, 25).await.unwrap();
    // Publish 8 s (the 3 s clip looped) at 25 fps; the player joins after 1 s.
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 0..200u64 {
            tick.tick().await;
            let u = &units[(i % units.len() as u64) as usize];
            let t = ticks(i, 25);
            p.send(&Frame { codec: Codec::H264, keyframe: u.keyframe, pts: t, dts: t, data: u.data.clone() })
                .await
                .unwrap();
        }
        p.close().await.unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = ng.1.join("played.flv");
    let play = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", &url, "-t", "3", "-c", "copy", "-y"])
        .arg(&out)
        .output()
        .await
        .unwrap();
    assert!(play.status.success(), "ffmpeg playing {url}: {}", String::from_utf8_lossy(&play.stderr));
    publisher.await.unwrap();
    let j =
        ivr_testkit::ffprobe(&out, "stream=codec_name,width,height,nb_read_frames").unwrap_or_else(|e| panic!("{e}"));
    let s = &j["streams"][0];
    assert_eq!(s["codec_name"], "h264", "{j}");
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(640), Some(360)));
    let frames: u64 = s["nb_read_frames"].as_str().unwrap().parse().unwrap();
    assert!((60..=80).contains(&frames), "3 s at 25 fps through nginx, got {frames}");
    ivr_testkit::decodes_cleanly(&out).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_refused_publish_names_the_server_code() {
    let (_ng, port) = nginx();
    // No such application: nginx-rtmp refuses the connect.
    let e = Publisher::connect(&format!("rtmp://127.0.0.1:{port}/nope/cam"), 25).await.err().expect("refused");
    assert!(matches!(&e, RtmpError::Closed("connect")), "{e}");
    assert!(e.to_string().contains("wrong application"), "{e}");
    let e = Publisher::connect("rtmp://127.0.0.1:1/live/cam", 25).await.err().unwrap();
    assert!(e.to_string().contains("connect"), "{e}");
}

/// nginx goes away in the middle of a publication and comes back: the
/// publisher reconnects on its own, and a player joining afterwards gets
/// video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reconnects_when_the_server_comes_back() {
    let (ng, port) = nginx();
    let url = format!("rtmp://127.0.0.1:{port}/live/again");
    let units = access_units(&Bytes::from_static(clips::H264_640X360), Codec::H264);
    let hub = ivr_media::hub::Hub::new(250, 8 << 20);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ev = events.clone();
    let sub = hub.subscribe();
    let u2 = url.clone();
    let publisher = tokio::spawn(async move {
        ivr_media::rtmp::publish_loop(sub, &u2, 25, Duration::from_secs(2), |e| ev.lock().unwrap().push(e.to_owned()))
            .await
    });
    // 15 s at 25 fps: nginx dies at 2 s and is back at 3 s; the player joins
    // at 5 s (and takes ~3 s of stream to probe it: ffmpeg waits for audio).
    let source = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 0..375u64 {
            tick.tick().await;
            let u = &units[(i % units.len() as u64) as usize];
            let t = ticks(i, 25);
            hub.publish(Frame { codec: Codec::H264, keyframe: u.keyframe, pts: t, dts: t, data: u.data.clone() });
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(ng);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ng = nginx_on(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = ng.1.join("after.flv");
    let play = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", &url, "-t", "2", "-c", "copy", "-y"])
        .arg(&out)
        .output();
    let play = tokio::time::timeout(Duration::from_secs(20), play)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "ffmpeg hung; events: {:?}; nginx: {}",
                events.lock().unwrap(),
                std::fs::read_to_string(ng.1.join("error.log")).unwrap_or_default()
            )
        })
        .unwrap();
    assert!(play.status.success(), "playing after the restart: {}", String::from_utf8_lossy(&play.stderr));
    source.await.unwrap();
    let st = publisher.await.unwrap();
    let n = ivr_testkit::frames(&out);
    assert!(n >= 25, "{n} frames played after the restart");
    assert!(st.reconnects >= 1, "{st:?}");
    assert!(st.dropped > 0 && st.last_error.is_some(), "{st:?}");
    assert!(st.frames + st.dropped == 375, "every frame sent or counted: {st:?}");
    let ev = events.lock().unwrap();
    assert!(ev.iter().any(|e| e.starts_with("reconnected to")), "{ev:?}");
}
