//! `ivr dvrip stream`: the camera's live view through the library's
//! reconnecting feed to a file, an RTMP server and a live HLS window.

use super::*;

/// One demuxed DVRIP frame into a container sink.
pub(super) async fn push_frame(
    sink: &mut ivr_media::sink::Sink,
    f: &MediaFrame,
    format: &str,
    out: &mut Output,
) -> anyhow::Result<()> {
    let frame = match ivr_edge::dvrip::frame(f) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(()),
        Err(what) => bail!("--format {format}: the device sends {what}, which ivr does not carry"),
    };
    sink_write(sink, frame, out).await.map(drop)
}

/// A frame into a container sink, 1 s into the timeline (room for the TS
/// clock reference); what the sink gives is written. Returns the bytes.
pub(super) async fn sink_write(
    sink: &mut ivr_media::sink::Sink,
    mut frame: ivr_media::Frame,
    out: &mut Output,
) -> anyhow::Result<usize> {
    frame.pts += 90_000;
    frame.dts += 90_000;
    let mut buf = Vec::new();
    sink.push(frame, &mut buf)?;
    let n = buf.len();
    if n > 0 {
        out.write(&Bytes::from(buf)).await?;
    }
    Ok(n)
}

pub(super) async fn finish_sink(
    sink: &mut ivr_media::sink::Sink,
    output: &str,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    sink.finish(&mut buf)?;
    out.write(&Bytes::from(buf)).await?;
    if sink.dropped_before_keyframe > 0 {
        eprintln!("{output}: {} frame(s) before the first keyframe left out", sink.dropped_before_keyframe);
    }
    if sink.audio_left_out > 0 {
        eprintln!("{output}: {} audio frame(s) left out: the container does not carry G.711", sink.audio_left_out);
    }
    Ok(())
}

pub(super) enum Output {
    Stdout(tokio::io::Stdout),
    File(tokio::io::BufWriter<tokio::fs::File>, String),
}

impl Output {
    pub(super) async fn open(path: &str) -> anyhow::Result<Output> {
        if path == "-" {
            return Ok(Output::Stdout(tokio::io::stdout()));
        }
        let f = tokio::fs::File::create(path).await.with_context(|| format!("cannot create {path}"))?;
        Ok(Output::File(tokio::io::BufWriter::new(f), path.to_owned()))
    }
    pub(super) async fn write(&mut self, b: &Bytes) -> anyhow::Result<()> {
        match self {
            Output::Stdout(o) => o.write_all(b).await.context("writing to stdout"),
            Output::File(f, p) => f.write_all(b).await.with_context(|| format!("writing {p}")),
        }
    }
    pub(super) async fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            Output::Stdout(o) => o.flush().await.context("writing to stdout"),
            Output::File(f, p) => f.flush().await.with_context(|| format!("writing {p}")),
        }
    }
}

/// Where `stream` sends the camera: any of a file, an RTMP server and a
/// live HLS directory, all at once from one device connection.
pub(super) struct Outputs {
    pub(super) file: Option<(String, Option<ivr_media::sink::Format>)>,
    pub(super) rtmp: Option<String>,
    pub(super) hls: Option<(std::path::PathBuf, ivr_media::sink::Format, usize, f64)>,
}

pub(super) type Limits = (Option<u64>, Option<Duration>);

/// `stream --raw`: the device's own framing, byte for byte.
pub(super) async fn stream_raw(
    c: &Client,
    channel: u32,
    st: StreamType,
    mode: SocketMode,
    (frames, seconds): Limits,
    output: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut s = c.monitor(channel, st, mode).await?;
    let mut out = Output::open(output).await?;
    let deadline = seconds.map(|d| tokio::time::Instant::now() + d);
    // Demuxed alongside only to count video frames for --frames.
    let mut d = dvrip::media::Demuxer::new();
    let mut n = 0u64;
    'read: loop {
        let next = s.next_chunk();
        let chunk = match deadline {
            Some(d) => tokio::time::timeout_at(d, next).await.ok().flatten(),
            None => next.await,
        };
        let Some(chunk) = chunk else { break };
        out.write(&chunk).await?;
        d.feed(&chunk);
        while let Some(f) = d.next_frame() {
            if matches!(f.kind, FrameKind::Video { .. }) {
                n += 1;
                if frames.is_some_and(|m| n >= m) {
                    break 'read;
                }
            }
        }
    }
    out.finish().await?;
    let bytes = s.bytes();
    s.stop().await?;
    if output != "-" {
        print(json, &json!({"bytes": bytes, "frames": n, "output": output}), || {
            format!("{n} video frames, {bytes} bytes written to {output}")
        });
    }
    Ok(())
}

/// A consumer that sees every frame the feed publishes from now on (the
/// counter of `--frames`).
pub(super) fn hub_counter(feed: &Feed) -> ivr_media::hub::Subscriber {
    feed.hub.subscribe()
}

/// `stream`: one device connection feeding a hub; each output is a
/// consumer of it (a slow one skips to the next keyframe rather than
/// holding the camera back).
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_fanout(
    c: &Client,
    channel: u32,
    st: StreamType,
    mode: SocketMode,
    (frames, seconds): Limits,
    outs: Outputs,
    reconnect: bool,
    json: bool,
) -> anyhow::Result<()> {
    // The camera: the library's reconnecting feed (the edge's own), whose
    // hub every output reads; this loop only counts and keeps the limits.
    let opener = ivr_edge::dvrip::monitor_opener(c.clone(), channel, mode);
    let kind = if st == StreamType::Extra { StreamKind::Extra } else { StreamKind::Main };
    let opts = FeedOptions {
        no_reconnect: !reconnect,
        fail_first: true,
        on_event: Some(Arc::new(|e: &FeedEvent| match e {
            FeedEvent::Dropped => eprintln!("the camera dropped the stream; reconnecting"),
            FeedEvent::CannotOpen { why, wait } => {
                eprintln!("cannot stream yet: {why}; again in {:.1} s", wait.as_secs_f64())
            }
            FeedEvent::Resumed { reconnects } => eprintln!("streaming again ({reconnects} reconnect(s))"),
        })),
    };
    let feed = Feed::start_with(format!("{} channel {channel}", c.config().addr), kind, opener, opts);
    let mut tasks: Vec<(String, tokio::task::JoinHandle<anyhow::Result<Value>>)> = Vec::new();
    if let Some((path, format)) = outs.file {
        let mut sub = feed.hub.subscribe();
        let name = format!("file {path}");
        tasks.push((
            name,
            tokio::spawn(async move {
                let mut out = Output::open(&path).await?;
                let mut sink = format.map(|f| ivr_media::sink::Sink::new(f, 25));
                let fname = format.map_or("annexb".to_owned(), |f| format!("{f:?}").to_lowercase());
                let mut written = 0u64;
                while let Some(f) = sub.recv().await {
                    match &mut sink {
                        None if f.codec.is_video() => {
                            written += f.data.len() as u64;
                            out.write(&f.data).await?;
                        }
                        None => {}
                        Some(sink) => {
                            written +=
                                sink_write(sink, f, &mut out).await.with_context(|| format!("--format {fname}"))?
                                    as u64;
                        }
                    }
                }
                let mut v = json!({"output": path, "format": fname, "skipped": sub.skipped});
                if let Some(sink) = &mut sink {
                    let mut buf = Vec::new();
                    sink.finish(&mut buf)?;
                    written += buf.len() as u64;
                    out.write(&Bytes::from(buf)).await?;
                    v["frames"] = json!(sink.frames);
                    v["audio_frames"] = json!(sink.audio_frames);
                    v["audio_left_out"] = json!(sink.audio_left_out);
                    if sink.audio_left_out > 0 {
                        eprintln!(
                            "{path}: {} audio frame(s) left out: {fname} does not carry G.711",
                            sink.audio_left_out
                        );
                    }
                }
                out.finish().await?;
                v["bytes"] = json!(written);
                Ok(v)
            }),
        ));
    }
    if let Some(url) = outs.rtmp {
        let sub = feed.hub.subscribe();
        tasks.push((
            format!("rtmp {url}"),
            tokio::spawn(async move {
                let st =
                    ivr_media::rtmp::publish_loop(sub, &url, 25, Duration::from_secs(30), |e| eprintln!("{e}")).await;
                if st.frames == 0 {
                    bail!("nothing published to {url}: {}", st.last_error.as_deref().unwrap_or("no keyframe came"));
                }
                let mut v = serde_json::to_value(&st)?;
                v["url"] = json!(url);
                Ok(v)
            }),
        ));
    }
    if let Some((dir, format, window, segment)) = outs.hls {
        let mut sub = feed.hub.subscribe();
        tasks.push((
            format!("hls {}", dir.display()),
            tokio::spawn(async move {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let mut w = ivr_media::hls::Writer::new(format, 25, segment, Some(window), "seg").with_start_ms(now_ms);
                let apply = |o: Vec<ivr_media::hls::Output>| {
                    ivr_media::hls::apply(&dir, "index.m3u8", o)
                        .with_context(|| format!("writing HLS into {}", dir.display()))
                };
                let mut segments = 0u64;
                while let Some(f) = sub.recv().await {
                    let o = w.push(f)?;
                    segments += o.iter().filter(|x| matches!(x, ivr_media::hls::Output::Playlist(_))).count() as u64;
                    apply(o)?;
                }
                apply(w.finish()?)?;
                Ok(json!({"dir": dir.display().to_string(), "segments": segments + 1, "skipped": sub.skipped}))
            }),
        ));
    }
    let mut counter = hub_counter(&feed);
    let deadline = seconds.map(|d| tokio::time::Instant::now() + d);
    let (mut n, mut first): (u64, Option<ivr_media::Frame>) = (0, None);
    let mut step = None;
    loop {
        let next = async {
            tokio::select! {
                f = counter.recv() => f,
                _ = feed.ended() => None,
            }
        };
        let f = match deadline {
            Some(d) => tokio::time::timeout_at(d, next).await.ok().flatten(),
            None => next.await,
        };
        let Some(f) = f else { break };
        if f.codec.is_video() {
            n += 1;
            match &first {
                None => first = Some(f),
                Some(a) if step.is_none() && f.dts > a.dts => step = Some(f.dts - a.dts),
                _ => {}
            }
            if frames.is_some_and(|m| n >= m) {
                break;
            }
        }
        if tasks.iter().all(|t| t.1.is_finished()) {
            break; // every output failed; the errors follow
        }
    }
    let failure = feed.failure();
    let (_, bytes, reconnects) = feed.counts();
    drop(counter);
    drop(feed);
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (name, t) in tasks {
        match t.await {
            Ok(Ok(v)) => results.push(v),
            Ok(Err(e)) => failed.push(format!("{name}: {e:#}")),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if let Some(why) = failure {
        bail!("{why}");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    let mut v = json!({"frames": n, "bytes": bytes, "reconnects": reconnects, "outputs": results});
    // What the camera sends, from the stream itself (parameter sets, timing).
    let sps = first.as_ref().and_then(|f| ivr_media::params::find_sps(f.codec, &f.data).ok());
    let fps = step.map(|s| (90_000.0 / s as f64).round() as u64);
    if let (Some(f), Some(sps)) = (&first, &sps) {
        v["codec"] = json!(if f.codec == ivr_media::Codec::H265 { "H.265" } else { "H.264" });
        v["width"] = json!(sps.width);
        v["height"] = json!(sps.height);
        v["fps"] = json!(fps);
    }
    let to_stdout = v["outputs"].as_array().is_some_and(|o| o.iter().any(|x| x["output"] == "-"));
    if !to_stdout {
        print(json, &v, || {
            let what = match (&first, &sps) {
                (Some(f), Some(sps)) => format!(
                    ", {} {}x{}{}",
                    if f.codec == ivr_media::Codec::H265 { "H.265" } else { "H.264" },
                    sps.width,
                    sps.height,
                    fps.map(|f| format!(" @ {f} fps")).unwrap_or_default()
                ),
                _ => String::new(),
            };
            format!("{n} frames{what}, {bytes} bytes received")
        });
    }
    Ok(())
}
