//! What every device channel has, whatever the protocol: the device's
//! alarm bits and video-loss inputs per channel ([`DeviceAlarms`], one per
//! device), and a channel's state, publications, recording and publish
//! configuration ([`DeviceChannel`]). The DVRIP and CVIP backends add only
//! what their protocol does.

use crate::backend::AlarmEvent;
use crate::live::Live;
use ivr_rpc::catalogue::{ChannelState, IvtRequest, Quality, RtmpPublishConfig};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// A device's alarms: bits per device channel, video loss, and the events
/// each change makes (only a change: a device that reports one alarm two
/// ways counts it once).
pub struct DeviceAlarms {
    lost: Mutex<HashSet<u32>>,
    bits: Mutex<HashMap<u32, u32>>,
    tx: broadcast::Sender<(u32, AlarmEvent)>,
}

impl Default for DeviceAlarms {
    fn default() -> Self {
        DeviceAlarms { lost: Mutex::default(), bits: Mutex::default(), tx: broadcast::channel(64).0 }
    }
}

impl DeviceAlarms {
    /// Video lost (or back) on a device channel; whether that is news.
    pub fn video_loss(&self, ch: u32, on: bool) -> bool {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            lost.insert(ch)
        } else {
            lost.remove(&ch)
        }
    }

    pub fn is_lost(&self, ch: u32) -> bool {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).contains(&ch)
    }

    /// Sets or clears a bit; whether it changed.
    pub fn set(&self, ch: u32, bit: u8, on: bool) -> bool {
        let mut bits = self.bits.lock().unwrap_or_else(|e| e.into_inner());
        let b = bits.entry(ch).or_default();
        let before = *b;
        if on {
            *b |= 1 << bit;
        } else {
            *b &= !(1 << bit);
        }
        *b != before
    }

    /// A device alarm: the bit, and an event for the channel's AlarmNotify
    /// when it changed.
    pub fn raise(&self, ch: u32, bit: u8, on: bool, desc: String) {
        if self.set(ch, bit, on) {
            let _ = self.tx.send((ch, AlarmEvent { bit, on, desc }));
        }
    }

    pub fn bits(&self, ch: u32) -> u32 {
        self.bits.lock().unwrap_or_else(|e| e.into_inner()).get(&ch).copied().unwrap_or(0)
    }

    /// The device went away: no alarm stands.
    pub fn clear(&self) {
        self.bits.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The events of device channel `ch` (and of the whole device, `0`,
    /// with `whole_device`), from now on.
    pub fn subscribe(&self, ch: u32, whole_device: bool) -> broadcast::Receiver<AlarmEvent> {
        let mut all = self.tx.subscribe();
        let (tx, rx) = broadcast::channel(64);
        tokio::spawn(async move {
            loop {
                match all.recv().await {
                    Ok((c, a)) if c == ch || (whole_device && c == 0) => {
                        if tx.send(a).is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        rx
    }
}

/// One channel of a device: IVT channel `channel` is the device's channel
/// (or input) `dev_channel`.
pub struct DeviceChannel {
    pub channel: u32,
    pub dev_channel: u32,
    pub alarms: Arc<DeviceAlarms>,
    pub live: Live,
    publish_config: Mutex<RtmpPublishConfig>,
}

impl DeviceChannel {
    pub fn new(channel: u32, dev_channel: u32, alarms: Arc<DeviceAlarms>, live: Live) -> DeviceChannel {
        let publish_config = RtmpPublishConfig { enable: false, channel, quality: Quality::Hd, url: String::new() };
        DeviceChannel { channel, dev_channel, alarms, live, publish_config: Mutex::new(publish_config) }
    }

    /// Offline while the device is away or the channel's video is lost;
    /// live while a publication receives frames.
    pub fn state(&self, device_online: bool) -> ChannelState {
        if !device_online || self.alarms.is_lost(self.dev_channel) {
            ChannelState::Offline
        } else if self.live.live() {
            ChannelState::Live
        } else {
            ChannelState::Online
        }
    }

    /// The requests every device answers the same way, without the device:
    /// stopping a publication or a recording (unknown ones are success).
    pub fn stop(&self, req: &IvtRequest) -> Option<Value> {
        match req {
            IvtRequest::RtmpStopPublish { stream_id, .. } => self.live.stop_publish(stream_id),
            IvtRequest::StopCloudRecord { session_id, .. } => self.live.stop_record(session_id),
            IvtRequest::GetRtmpPublishConfig | IvtRequest::SetRtmpPublishConfig(_) => {}
            _ => return None,
        }
        Some(json!({}))
    }

    pub fn publish_config(&self) -> RtmpPublishConfig {
        self.publish_config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_publish_config(&self, c: &RtmpPublishConfig) {
        *self.publish_config.lock().unwrap_or_else(|e| e.into_inner()) = c.clone();
    }
}
