//! `edge.toml`: where the cloud is, who we are, which channels we drive.
//!
//! ```toml
//! [cloud]
//! url = "ws://127.0.0.1:8080/ivc"
//! # or, for a cloud of several nodes, tried in turn:
//! # urls = ["wss://ivc-1.example/ivc", "wss://ivc-2.example/ivc"]
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
//!
//! [[channels]]
//! channel = 1
//! source = "dvrip://admin@192.168.1.10:34567/0?stream=main"
//! password_env = "CAM1_PASSWORD"
//!
//! [[channels]]
//! channel = 2
//! source = "cvip://192.168.1.20:7110/1"
//! ```
//!
//! Sources are described in [`crate::source`].

use crate::source::Source;
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub cloud: CloudConfig,
    /// Site-wide device settings.
    #[serde(default)]
    pub devices: DevicesConfig,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
}

/// `[devices]`: what the site's devices share.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Listen here as the DVRIP alarm center (TCP, 1508 pushes): devices
    /// whose `NetWork.AlarmServer` points at this address report alarms
    /// here too (some firmware only pushes there, not to guarded logins).
    #[serde(default)]
    pub alarm_center: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// `ws://host:port/ivc` (or `wss://`): the first of [`Self::urls`].
    #[serde(default)]
    pub url: String,
    /// The cloud's nodes: the first, then on a failed dial or a lost
    /// session another one drawn at random (after a jittered pause).
    /// `url` alone is a list of one.
    #[serde(default)]
    pub urls: Vec<String>,
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
    /// `sim`, `dvrip://…` or `cvip://…` ([`crate::source`]).
    pub source: String,
    /// The DVRIP password from this environment variable instead of the URL.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Simulated motion alarms every this many seconds (0: none).
    #[serde(default)]
    pub alarm_every_secs: u64,
    /// A preview picture uploaded every this many seconds (0: never).
    #[serde(default = "default_preview")]
    pub preview_every_secs: u64,
    /// `source` read and checked by [`EdgeConfig::parse`].
    #[serde(skip)]
    pub parsed: Option<Source>,
}

impl ChannelConfig {
    /// The channel's source (as checked by [`EdgeConfig::parse`]).
    pub fn source(&self) -> Source {
        match &self.parsed {
            Some(s) => s.clone(),
            None => Source::parse(&self.source).unwrap_or(Source::Sim),
        }
    }
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

/// What is wrong in a configuration's text: the field or line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: p.clone(), cause })?;
        EdgeConfig::parse(&text).map_err(|e| ConfigError::Invalid { path: p, message: e.0 })
    }

    /// The channels of a configuration as written (number, source), without
    /// the checks of [`EdgeConfig::parse`] (no environment needed).
    pub fn written_channels(text: &str) -> Result<Vec<(u32, String)>, InvalidConfig> {
        let cfg: EdgeConfig = toml::from_str(text).map_err(|e| InvalidConfig(e.to_string().trim_end().to_owned()))?;
        Ok(cfg.channels.into_iter().map(|c| (c.channel, c.source)).collect())
    }

    /// Parses and checks a configuration; the error says which line or field.
    pub fn parse(text: &str) -> Result<EdgeConfig, InvalidConfig> {
        EdgeConfig::checked(text).map_err(InvalidConfig)
    }

    fn checked(text: &str) -> Result<EdgeConfig, String> {
        let mut cfg: EdgeConfig = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        match (cfg.cloud.url.is_empty(), cfg.cloud.urls.is_empty()) {
            (true, true) => return Err("[cloud]: url (or urls = [...]) is missing".into()),
            (false, false) if cfg.cloud.urls[0] != cfg.cloud.url => {
                return Err("[cloud]: give url or urls, not both".into());
            }
            (false, true) => cfg.cloud.urls = vec![cfg.cloud.url.clone()],
            _ => cfg.cloud.url = cfg.cloud.urls[0].clone(),
        }
        for (i, u) in cfg.cloud.urls.iter().enumerate() {
            let field = if cfg.cloud.urls.len() == 1 { "cloud.url".to_string() } else { format!("cloud.urls[{i}]") };
            if !(u.starts_with("ws://") || u.starts_with("wss://")) {
                return Err(format!("{field} {u:?}: expected ws://… or wss://…"));
            }
            if let Err(why) = ivr_rpc::net::target(u) {
                return Err(format!("{field} {u:?}: {why}"));
            }
        }
        if cfg.cloud.login_code.is_empty() {
            return Err("cloud.login_code: empty".into());
        }
        if !(1..=3600).contains(&cfg.cloud.keepalive_secs) {
            return Err(format!("cloud.keepalive_secs {}: expected 1 to 3600", cfg.cloud.keepalive_secs));
        }
        let mut seen = std::collections::HashSet::new();
        // (address, user) → (first channel index, password): one login a device.
        let mut logins: std::collections::HashMap<(String, String), (usize, String)> = Default::default();
        for (i, c) in cfg.channels.iter_mut().enumerate() {
            if !seen.insert(c.channel) {
                return Err(format!("channels[{i}]: channel {} is listed twice", c.channel));
            }
            let mut src =
                Source::parse(&c.source).map_err(|e| format!("channels[{i}].source {:?}: {e}", redact(&c.source)))?;
            if let Some(var) = &c.password_env {
                let Source::Dvrip(d) = &mut src else {
                    return Err(format!("channels[{i}].password_env: only dvrip:// sources have a password"));
                };
                d.password = std::env::var(var)
                    .map_err(|_| format!("channels[{i}].password_env: the environment variable {var} is not set"))?;
            }
            if c.alarm_every_secs > 0 && src != Source::Sim {
                return Err(format!(
                    "channels[{i}].alarm_every_secs: simulated alarms are for source = \"sim\"; a device raises its own"
                ));
            }
            if let Source::Dvrip(d) = &src {
                let first = logins.entry((d.addr(), d.user.clone())).or_insert((i, d.password.clone()));
                if first.1 != d.password {
                    return Err(format!(
                        "channels[{i}]: the same device and user as channels[{}] with another password (one login a device)",
                        first.0
                    ));
                }
            }
            c.parsed = Some(src);
        }
        Ok(cfg)
    }
}

/// A source URL with its password replaced, for error messages.
fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => match s[a + 3..b].split_once(':') {
            Some((u, _)) => format!("{}{u}:***{}", &s[..a + 3], &s[b..]),
            None => s.to_owned(),
        },
        _ => s.to_owned(),
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
    fn a_cloud_of_several_nodes_is_a_list_tried_in_turn() {
        let c = EdgeConfig::parse(&GOOD.replace(
            "url = \"ws://127.0.0.1:8080/ivc\"",
            "urls = [\"ws://127.0.0.1:1/ivc\", \"wss://ivc-2.example/ivc\"]",
        ))
        .unwrap();
        assert_eq!(c.cloud.url, "ws://127.0.0.1:1/ivc");
        assert_eq!(c.cloud.urls.len(), 2);
        let one = EdgeConfig::parse(GOOD).unwrap();
        assert_eq!(one.cloud.urls, vec![one.cloud.url.clone()]);
    }

    #[test]
    fn the_example_with_defaults() {
        let c = EdgeConfig::parse(GOOD).unwrap();
        assert_eq!(c.cloud.keepalive_secs, 30);
        assert_eq!(c.cloud.hardware_model, "ivr-edge");
        assert_eq!(c.channels.len(), 2);
    }

    #[test]
    fn device_sources_and_passwords_from_the_environment() {
        std::env::set_var("IVR_TEST_CAM_PW", "from env");
        let c = EdgeConfig::parse(&format!(
            "{GOOD}\n[[channels]]\nchannel = 2\nsource = \"dvrip://admin:inurl@10.0.0.2/1?stream=extra\"\npassword_env = \"IVR_TEST_CAM_PW\"\n\n[[channels]]\nchannel = 3\nsource = \"cvip://10.0.0.3/2\"\n"
        ))
        .unwrap();
        let crate::source::Source::Dvrip(d) = c.channels[2].source() else { panic!() };
        assert_eq!((d.password.as_str(), d.channel), ("from env", 1));
        assert!(matches!(c.channels[3].source(), crate::source::Source::Cvip(ref s) if s.input == 2));
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
                GOOD.replace("source = \"sim\"\n\n[[channels]]", "source = \"rtsp://u:pw@cam\"\n\n[[channels]]"),
                "channels[0].source \"rtsp://u:***@cam\": expected \"sim\"",
            ),
            (
                GOOD.replace(
                    "source = \"sim\"\n\n[[channels]]",
                    "source = \"dvrip://cam/0\"\npassword_env = \"IVR_TEST_UNSET_VAR\"\n\n[[channels]]",
                ),
                "channels[0].password_env: the environment variable IVR_TEST_UNSET_VAR is not set",
            ),
            (
                GOOD.replace(
                    "source = \"sim\"\n\n[[channels]]",
                    "source = \"cvip://cam/1\"\nalarm_every_secs = 5\n\n[[channels]]",
                ),
                "simulated alarms are for source",
            ),
            (GOOD.replace("[cloud]", "[cloud]\nbogus = 1"), "unknown field `bogus`"),
            (
                GOOD.replace("source = \"sim\"\n\n[[channels]]", "source = \"dvrip://admin:a@cam/0\"\n\n[[channels]]")
                    .replace("channel = 1\nsource = \"sim\"", "channel = 1\nsource = \"dvrip://admin:b@cam/1\""),
                "channels[1]: the same device and user as channels[0] with another password",
            ),
            ("[cloud\nurl=1".to_string(), "line"),
            (
                GOOD.replace("url = \"ws://127.0.0.1:8080/ivc\"", "urls = [\"ws://a/ivc\", \"http://b/ivc\"]"),
                "cloud.urls[1] \"http://b/ivc\": expected ws://",
            ),
            (GOOD.replace("url = \"ws://127.0.0.1:8080/ivc\"", "urls = []"), "url (or urls = [...]) is missing"),
            (
                GOOD.replace("url = \"ws://127.0.0.1:8080/ivc\"", "url = \"ws://a/ivc\"\nurls = [\"ws://b/ivc\"]"),
                "not both",
            ),
        ] {
            let e = EdgeConfig::parse(&text).unwrap_err();
            assert!(e.0.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
