//! `edge.toml`: where the cloud is, who we are, which channels we drive.
//!
//! ```toml
//! [cloud]
//! url = "ws://127.0.0.1:8080/ivc"
//! login_code = "site-1"
//! login_passwd = "…"
//! hardware_model = "ivr-edge"
//! firmware_model = "0.1.0"
//! keepalive_secs = 30
//!
//! [[channels]]
//! channel = 0
//! source = "sim"
//! alarm_every_secs = 0       # simulated motion alarms (0: none)
//! preview_every_secs = 300   # preview uploads (0: never)
//! ```

use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub cloud: CloudConfig,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// `ws://host:port/ivc` (or `wss://`).
    pub url: String,
    pub login_code: String,
    pub login_passwd: String,
    #[serde(default = "default_hardware")]
    pub hardware_model: String,
    #[serde(default = "default_firmware")]
    pub firmware_model: String,
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// The local address to dial from (default: the system's choice).
    #[serde(default)]
    pub bind: Option<std::net::IpAddr>,
    /// For wss:// and https://: trust only the certificates in this PEM
    /// file (a private cloud's CA). Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub channel: u32,
    /// `sim` (dvrip:// and cvip:// sources come with later releases).
    pub source: String,
    /// Simulated motion alarms every this many seconds (0: none).
    #[serde(default)]
    pub alarm_every_secs: u64,
    /// A preview picture uploaded every this many seconds (0: never).
    #[serde(default = "default_preview")]
    pub preview_every_secs: u64,
}

fn default_preview() -> u64 {
    300
}

fn default_hardware() -> String {
    "ivr-edge".into()
}
fn default_firmware() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn default_keepalive() -> u64 {
    30
}

/// What is wrong with a configuration, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: p.clone(), cause })?;
        EdgeConfig::parse(&text).map_err(|message| ConfigError::Invalid { path: p, message })
    }

    /// Parses and checks a configuration; the error says which line or field.
    pub fn parse(text: &str) -> Result<EdgeConfig, String> {
        let cfg: EdgeConfig = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let u = &cfg.cloud.url;
        if !(u.starts_with("ws://") || u.starts_with("wss://")) {
            return Err(format!("cloud.url {u:?}: expected ws://… or wss://…"));
        }
        if let Err(why) = ivr_rpc::net::target(u) {
            return Err(format!("cloud.url {u:?}: {why}"));
        }
        if cfg.cloud.login_code.is_empty() {
            return Err("cloud.login_code: empty".into());
        }
        if !(1..=3600).contains(&cfg.cloud.keepalive_secs) {
            return Err(format!("cloud.keepalive_secs {}: expected 1 to 3600", cfg.cloud.keepalive_secs));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in cfg.channels.iter().enumerate() {
            if !seen.insert(c.channel) {
                return Err(format!("channels[{i}]: channel {} is listed twice", c.channel));
            }
            if c.source != "sim" {
                let later = c.source.starts_with("dvrip://") || c.source.starts_with("cvip://");
                return Err(if later {
                    format!("channels[{i}].source {:?}: dvrip:// and cvip:// sources come with a later release; use \"sim\"", c.source)
                } else {
                    format!("channels[{i}].source {:?}: expected \"sim\"", c.source)
                });
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cloud]
url = "ws://127.0.0.1:8080/ivc"
login_code = "site-1"
login_passwd = "pw"

[[channels]]
channel = 0
source = "sim"

[[channels]]
channel = 1
source = "sim"
"#;

    #[test]
    fn the_example_with_defaults() {
        let c = EdgeConfig::parse(GOOD).unwrap();
        assert_eq!(c.cloud.keepalive_secs, 30);
        assert_eq!(c.cloud.hardware_model, "ivr-edge");
        assert_eq!(c.channels.len(), 2);
    }

    #[test]
    fn errors_say_where() {
        for (text, want) in [
            (GOOD.replace("login_code = \"site-1\"\n", ""), "missing field `login_code`"),
            (
                GOOD.replace("keepalive", "x")
                    .replace("login_passwd = \"pw\"", "login_passwd = \"pw\"\nkeepalive_secs = 0"),
                "keepalive_secs 0",
            ),
            (GOOD.replace("ws://", "http://"), "expected ws://"),
            (GOOD.replace("channel = 1", "channel = 0"), "channels[1]: channel 0 is listed twice"),
            (
                GOOD.replace("source = \"sim\"\n\n[[channels]]", "source = \"dvrip://cam\"\n\n[[channels]]"),
                "come with a later release",
            ),
            (GOOD.replace("[cloud]", "[cloud]\nbogus = 1"), "unknown field `bogus`"),
            ("[cloud\nurl=1".to_string(), "line"),
        ] {
            let e = EdgeConfig::parse(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
