//! `ivr edge discover`: the DVRIP and CVIP devices on the LAN, as the
//! `[[channels]]` lines of an edge.toml (one line per channel of every
//! device: a 16-channel NVR gives 16).
//!
//! DVRIP: the vendor's search (1530 to UDP 34569, broadcast); the reply's
//! `NetWork.NetCommon` carries the TCP port and the channel count. CVIP: a
//! Ping Request over UDP (broadcast, to the CVIP port and the common port
//! 9990); the channel count is read from the unit's services (one
//! `cviVideo.NN` per video input).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A device found on the network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// `dvrip` or `cvip`.
    pub protocol: &'static str,
    /// Where to reach it (host:port of its protocol).
    pub addr: SocketAddr,
    /// Serial number, MAC (DVRIP) or GUID (CVIP).
    pub id: String,
    pub name: String,
    pub channels: u32,
}

impl Found {
    /// The channel sources of the device: `dvrip://USER@HOST:PORT/N`
    /// (channels from 0) or `cvip://HOST:PORT/N` (inputs from 1).
    pub fn sources(&self, user: &str) -> Vec<String> {
        let host = match self.addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let port = self.addr.port();
        match self.protocol {
            "dvrip" => (0..self.channels.max(1))
                .map(|n| format!("dvrip://{}@{host}:{port}/{n}", ivr_rpc::ws::encode(user)))
                .collect(),
            _ => (1..=self.channels.max(1)).map(|n| format!("cvip://{host}:{port}/{n}")).collect(),
        }
    }
}

/// Searches for both kinds at once for `wait`.
pub async fn discover(dvrip_targets: &[SocketAddr], cvip_targets: &[SocketAddr], wait: Duration) -> Vec<Found> {
    let dv = async {
        let mut out = Vec::new();
        for t in dvrip_targets {
            match dvrip::discovery::search(*t, wait).await {
                Ok(found) => {
                    for (from, d) in found {
                        let ip = d.host_ip.filter(|i| !i.is_unspecified()).map(IpAddr::V4).unwrap_or(from.ip());
                        // The address the reply came from is the one we reach.
                        let ip = if from.ip().is_loopback() || ip != from.ip() { from.ip() } else { ip };
                        let port = if d.tcp_port == 0 { 34567 } else { d.tcp_port };
                        let f = Found {
                            protocol: "dvrip",
                            addr: SocketAddr::new(ip, port),
                            id: if d.serial.is_empty() { d.mac.clone() } else { d.serial.clone() },
                            name: d.host_name.clone(),
                            channels: d.channels.max(1),
                        };
                        if !out.iter().any(|o: &Found| o.addr == f.addr) {
                            out.push(f);
                        }
                    }
                }
                Err(e) => tracing::warn!(target = %t, "DVRIP search: {e}"),
            }
        }
        out
    };
    let cv = async {
        let mut out = Vec::new();
        match cvip::ping::discover_udp(cvip_targets, wait).await {
            Ok(found) => {
                for f in found {
                    let r = &f.response;
                    let ip = if r.ip.is_unspecified() { f.from.ip() } else { IpAddr::V4(r.ip) };
                    let addr = SocketAddr::new(ip, if r.port == 0 { 7110 } else { r.port });
                    if out.iter().any(|o: &Found| o.addr == addr) {
                        continue;
                    }
                    let (name, channels) = cvip_inputs(addr).await;
                    out.push(Found { protocol: "cvip", addr, id: r.guid_string(), name, channels });
                }
            }
            Err(e) => tracing::warn!("CVIP ping: {e}"),
        }
        out
    };
    let (mut a, b) = tokio::join!(dv, cv);
    a.extend(b);
    a
}

/// The unit's name and video inputs (`cviVideo.NN` services); (``, 1)
/// when it cannot be asked.
async fn cvip_inputs(addr: SocketAddr) -> (String, u32) {
    let ask = async {
        let (c, _) = cvip::client::Client::connect(&addr.to_string()).await.ok()?;
        let name = c.system_describe().await.map(|d| d.name).unwrap_or_default();
        let services = c.list_services().await.ok()?;
        let n = services
            .iter()
            .filter(|s| {
                s.strip_prefix("cviVideo.").is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_digit()))
            })
            .count() as u32;
        Some((name, n.max(1)))
    };
    tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten().unwrap_or((String::new(), 1))
}

/// `[[channels]]` tables for the devices, numbered from `first`, skipping
/// sources already in `existing`. `password_env` is written for DVRIP
/// channels when given.
pub fn channel_tables(
    found: &[Found],
    user: &str,
    password_env: Option<&str>,
    first: u32,
    existing: &[String],
) -> (String, u32) {
    let mut out = String::new();
    let mut n = first;
    for f in found {
        let name = if f.name.is_empty() { String::new() } else { format!(" {:?}", f.name) };
        let mut header = Some(format!("\n# {} {}{name} ({}), {} channel(s)\n", f.protocol, f.addr, f.id, f.channels));
        for s in f.sources(user) {
            if existing.iter().any(|e| e.split('?').next() == Some(s.as_str())) {
                continue;
            }
            if let Some(h) = header.take() {
                out.push_str(&h);
            }
            out.push_str(&format!("[[channels]]\nchannel = {n}\nsource = {s:?}\n"));
            if let (Some(var), "dvrip") = (password_env, f.protocol) {
                out.push_str(&format!("password_env = {var:?}\n"));
            }
            n += 1;
        }
    }
    (out, n - first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_nvr_gives_a_line_per_channel() {
        let nvr = Found {
            protocol: "dvrip",
            addr: "192.168.1.10:34567".parse().unwrap(),
            id: "abc".into(),
            name: "NVR".into(),
            channels: 16,
        };
        let cam = Found {
            protocol: "cvip",
            addr: "192.168.1.20:7110".parse().unwrap(),
            id: "G".into(),
            name: String::new(),
            channels: 2,
        };
        let existing = vec!["dvrip://admin@192.168.1.10:34567/0?stream=main".to_owned()];
        let (t, n) = channel_tables(&[nvr, cam], "admin", Some("NVR_PW"), 3, &existing);
        assert_eq!(n, 17, "15 new NVR channels and 2 CVIP inputs:\n{t}");
        assert!(t.contains("channel = 3\nsource = \"dvrip://admin@192.168.1.10:34567/1\"\npassword_env = \"NVR_PW\"\n"));
        assert!(t.contains("source = \"cvip://192.168.1.20:7110/2\"\n"));
        assert!(!t.contains("/0\""), "already configured");
        let cfg = format!("[cloud]\nurl = \"ws://x/ivc\"\nlogin_code = \"a\"\nlogin_passwd = \"b\"\n{t}");
        std::env::set_var("NVR_PW", "x");
        assert_eq!(crate::EdgeConfig::parse(&cfg).unwrap().channels.len(), 17, "the lines are a valid edge.toml");
    }
}
