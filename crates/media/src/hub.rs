//! Fan-out: one source, many consumers (an RTMP publish, a cloud
//! recording, previews, browsers). Frames are shared, not copied: every
//! consumer gets a `Frame` whose payload `Bytes` points at the source's
//! buffer. Memory is bounded by the ring (`capacity` frames, shared by all
//! consumers) plus the cached GOP: a consumer that falls a ring behind
//! does not hold anything back — it loses its place, is counted, and
//! resumes at the next keyframe (audio included, so sound and picture stay
//! together). A new consumer starts at once from the latest keyframe
//! (the GOP cache), so a preview shows a picture without waiting for the
//! camera's next I-frame.

use crate::Frame;
use std::sync::Mutex;
use tokio::sync::broadcast::{self, error::RecvError};

struct Cache {
    gop: Vec<Frame>,
    bytes: usize,
}

/// The source side. Dropping it ends every subscription (after the frames
/// already sent).
pub struct Hub {
    tx: broadcast::Sender<Frame>,
    cache: Mutex<Cache>,
    max_cache: usize,
}

impl Hub {
    /// `capacity`: frames in the ring (at 25 fps, 250 is 10 s behind);
    /// `max_cache`: bytes the GOP cache may hold (a longer GOP stops being
    /// cached until its next keyframe).
    pub fn new(capacity: usize, max_cache: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity.max(2));
        Hub { tx, cache: Mutex::new(Cache { gop: Vec::new(), bytes: 0 }), max_cache }
    }

    /// Sends a frame to every consumer; returns how many there are.
    pub fn publish(&self, f: Frame) -> usize {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if f.codec.is_video() && f.keyframe {
            c.gop.clear();
            c.bytes = 0;
        }
        let keep = !c.gop.is_empty() || (f.codec.is_video() && f.keyframe);
        if keep && c.bytes + f.data.len() <= self.max_cache {
            c.bytes += f.data.len();
            c.gop.push(f.clone());
        } else if keep {
            c.gop.clear();
            c.bytes = 0;
        }
        // Under the lock: a subscriber sees the cache and then exactly the
        // frames after it.
        self.tx.send(f).unwrap_or(0)
    }

    pub fn subscribe(&self) -> Subscriber {
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let backlog: std::collections::VecDeque<Frame> = c.gop.iter().cloned().collect();
        let waiting = backlog.is_empty();
        Subscriber { rx, backlog, waiting_for_key: waiting, skipped: 0, lost_place: 0 }
    }

    pub fn consumers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One consumer.
pub struct Subscriber {
    rx: broadcast::Receiver<Frame>,
    backlog: std::collections::VecDeque<Frame>,
    waiting_for_key: bool,
    /// Frames this consumer did not get (overrun, or dropped while waiting
    /// for a keyframe).
    pub skipped: u64,
    /// Times it fell a ring behind.
    pub lost_place: u64,
}

impl Subscriber {
    /// Frames waiting from the GOP cache (what a new consumer gets before
    /// the live frames): a recording takes them as its pre-record.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// The next frame; `None` once the source is gone and everything sent
    /// has been taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        if let Some(f) = self.backlog.pop_front() {
            return Some(f);
        }
        loop {
            match self.rx.recv().await {
                Ok(f) => {
                    if self.waiting_for_key {
                        if !(f.codec.is_video() && f.keyframe) {
                            self.skipped += 1;
                            continue;
                        }
                        self.waiting_for_key = false;
                    }
                    return Some(f);
                }
                Err(RecvError::Lagged(n)) => {
                    self.skipped += n;
                    self.lost_place += 1;
                    self.waiting_for_key = true;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;
    use bytes::Bytes;

    fn stream(n: u64, gop: u64) -> Vec<Frame> {
        (0..n)
            .map(|i| Frame {
                codec: Codec::H264,
                keyframe: i % gop == 0,
                pts: i * 3600,
                dts: i * 3600,
                data: Bytes::from(vec![i as u8; 1000]),
            })
            .collect()
    }

    #[tokio::test]
    async fn every_consumer_gets_every_frame_without_a_copy() {
        let hub = Hub::new(64, 1 << 20);
        let mut subs: Vec<Subscriber> = (0..3).map(|_| hub.subscribe()).collect();
        let frames = stream(50, 10);
        let tasks: Vec<_> = subs
            .drain(..)
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Some(f) = s.recv().await {
                        got.push(f);
                    }
                    (got, s.skipped)
                })
            })
            .collect();
        for f in &frames {
            hub.publish(f.clone());
            tokio::task::yield_now().await;
        }
        drop(hub);
        for t in tasks {
            let (got, skipped) = t.await.unwrap();
            assert_eq!(skipped, 0);
            assert_eq!(got.len(), 50);
            for (g, f) in got.iter().zip(&frames) {
                assert_eq!(g.dts, f.dts);
                assert_eq!(g.data.as_ptr(), f.data.as_ptr(), "the payload is shared, not copied");
            }
        }
    }

    #[tokio::test]
    async fn a_slow_consumer_skips_to_the_next_keyframe() {
        let hub = Hub::new(16, 1 << 20);
        let mut slow = hub.subscribe();
        let frames = stream(100, 10);
        for f in &frames {
            hub.publish(f.clone());
        }
        drop(hub);
        let mut got = Vec::new();
        while let Some(f) = slow.recv().await {
            got.push(f);
        }
        assert!(slow.lost_place >= 1);
        assert!(got[0].keyframe, "resumes at a keyframe");
        assert!(got.windows(2).all(|w| w[1].dts == w[0].dts + 3600), "then without a hole");
        assert_eq!(got.len() as u64 + slow.skipped, 100, "every frame either received or counted");
        assert!(got.len() <= 16, "no more than the ring was kept for it");
    }

    #[tokio::test]
    async fn a_late_consumer_starts_at_the_latest_keyframe() {
        let hub = Hub::new(64, 1 << 20);
        let frames = stream(25, 10);
        for f in &frames[..25] {
            hub.publish(f.clone());
        }
        let mut late = hub.subscribe();
        hub.publish(stream(26, 10)[25].clone());
        drop(hub);
        let mut got = Vec::new();
        while let Some(f) = late.recv().await {
            got.push(f.dts / 3600);
        }
        assert_eq!(got, (20..26).collect::<Vec<_>>());
        // A GOP over the cache's limit is not cached: a late consumer waits.
        let hub = Hub::new(64, 2500);
        for f in &frames[..15] {
            hub.publish(f.clone());
        }
        let mut late = hub.subscribe();
        for f in &frames[15..25] {
            hub.publish(f.clone());
        }
        drop(hub);
        let first = late.recv().await.unwrap();
        assert_eq!(first.dts / 3600, 20);
        assert_eq!(late.skipped, 5, "frames 15–19, the rest of the GOP too long to cache");
    }
}
