//! Channel sources: where a channel's video and control come from.
//!
//! ```text
//! sim                                                  the built-in simulated camera
//! dvrip://USER:PASSWORD@HOST[:34567]/N?stream=main     channel N (from 0) of a DVRIP camera, DVR or NVR
//! cvip://HOST[:7110]/N?stream=main                     video input N (cviVideo.N, from 1) of a CVIP unit
//! ```
//!
//! `stream` is `main` (the default) or `extra` (`sub`): the device's second
//! encoder. User and password are percent-decoded; `password_env` in the
//! channel's table overrides the URL's password so a configuration file can
//! be committed without secrets. Channels whose URLs name the same device
//! (scheme, host, port, and for DVRIP the user) share one connection.

/// Which of a device's encoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Main,
    Extra,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Main => "main",
            StreamKind::Extra => "extra",
        }
    }
}

/// A DVRIP device and one of its channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DvripSource {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The device's channel, from 0.
    pub channel: u32,
    pub stream: StreamKind,
}

impl DvripSource {
    /// `host:port`, what the DVRIP client dials.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// A CVIP unit and one of its video inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvipSource {
    pub host: String,
    pub port: u16,
    /// The unit's video input (`cviVideo.N`, `major`), from 1.
    pub input: u32,
    pub stream: StreamKind,
}

impl CvipSource {
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Sim,
    Dvrip(DvripSource),
    Cvip(CvipSource),
}

/// What is wrong with a source URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("expected \"sim\", dvrip://USER:PASSWORD@HOST[:PORT]/CHANNEL or cvip://HOST[:PORT]/INPUT")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("channel {0:?} is not a number{1}")]
    Channel(String, &'static str),
    #[error("stream={0:?}: expected main or extra")]
    Stream(String),
    #[error("unknown option {0:?} (only stream=main|extra)")]
    Option(String),
    #[error("{0}: bad percent-encoding")]
    Percent(&'static str),
    #[error("cvip:// takes no user or password (CVIP units have no login)")]
    CvipUser,
}

/// RFC 3986 percent-decoding (UTF-8).
fn decode(s: &str, what: &'static str) -> Result<String, SourceError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(SourceError::Percent(what))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| SourceError::Percent(what))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SourceError::Percent(what))
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, SourceError> {
        if s == "sim" {
            return Ok(Source::Sim);
        }
        let (scheme, rest) = s.split_once("://").ok_or(SourceError::Scheme)?;
        let (dvrip, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "dvrip" => (true, 34567),
            "cvip" => (false, 7110),
            _ => return Err(SourceError::Scheme),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or(SourceError::NoHost)?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(SourceError::NoHost);
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| SourceError::Port(p.into()))?,
        };
        let mut stream = StreamKind::Main;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("stream", v)) => {
                    stream = match v.to_ascii_lowercase().as_str() {
                        "main" | "0" => StreamKind::Main,
                        "extra" | "sub" | "extra1" | "1" => StreamKind::Extra,
                        _ => return Err(SourceError::Stream(v.into())),
                    }
                }
                _ => return Err(SourceError::Option(kv.into())),
            }
        }
        let path = path.trim_end_matches('/');
        let number = |default: u32, min: u32, why: &'static str| -> Result<u32, SourceError> {
            if path.is_empty() {
                return Ok(default);
            }
            path.parse::<u32>().ok().filter(|&n| n >= min).ok_or_else(|| SourceError::Channel(path.into(), why))
        };
        let host = host.to_owned();
        if dvrip {
            let (user, password) = match userinfo {
                None => ("admin".to_owned(), String::new()),
                Some(u) => match u.split_once(':') {
                    Some((u, p)) => (decode(u, "user")?, decode(p, "password")?),
                    None => (decode(u, "user")?, String::new()),
                },
            };
            Ok(Source::Dvrip(DvripSource { host, port, user, password, channel: number(0, 0, "")?, stream }))
        } else {
            if userinfo.is_some() {
                return Err(SourceError::CvipUser);
            }
            Ok(Source::Cvip(CvipSource { host, port, input: number(1, 1, " from 1 (cviVideo.N)")?, stream }))
        }
    }

    /// The URL with the password hidden, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Source::Sim => "sim".into(),
            Source::Dvrip(d) => format!(
                "dvrip://{}@{}/{}?stream={}",
                crate::source::encode_user(&d.user),
                d.addr(),
                d.channel,
                d.stream.as_str()
            ),
            Source::Cvip(c) => format!("cvip://{}/{}?stream={}", c.addr(), c.input, c.stream.as_str()),
        }
    }
}

fn encode_user(u: &str) -> String {
    ivr_rpc::ws::encode(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_forms() {
        assert_eq!(
            Source::parse("dvrip://admin:PASSWORD@192.168.1.10:34567/0?stream=main").unwrap(),
            Source::Dvrip(DvripSource {
                host: "192.168.1.10".into(),
                port: 34567,
                user: "admin".into(),
                password: "PASSWORD".into(),
                channel: 0,
                stream: StreamKind::Main,
            })
        );
        assert_eq!(
            Source::parse("cvip://192.168.1.20:7110/1").unwrap(),
            Source::Cvip(CvipSource { host: "192.168.1.20".into(), port: 7110, input: 1, stream: StreamKind::Main })
        );
        let Source::Dvrip(d) = Source::parse("dvrip://op%40site:p%3Aw%2F%C3%A9@[::1]/3?stream=extra").unwrap() else {
            panic!()
        };
        assert_eq!((d.user.as_str(), d.password.as_str(), d.addr().as_str()), ("op@site", "p:w/é", "[::1]:34567"));
        assert_eq!((d.channel, d.stream), (3, StreamKind::Extra));
        assert_eq!(Source::parse("sim").unwrap(), Source::Sim);
        assert_eq!(
            Source::parse("dvrip://admin:secret@cam/2").unwrap().redacted(),
            "dvrip://admin@cam:34567/2?stream=main",
            "no password in logs"
        );
    }

    #[test]
    fn errors_say_what() {
        for (s, want) in [
            ("rtsp://cam/1", "expected \"sim\""),
            ("dvrip://admin@:34567/0", "no host"),
            ("dvrip://cam:99999/0", "port \"99999\""),
            ("dvrip://cam/x", "channel \"x\" is not a number"),
            ("cvip://cam/0", "from 1 (cviVideo.N)"),
            ("dvrip://cam/0?stream=third", "stream=\"third\""),
            ("dvrip://cam/0?fps=5", "unknown option \"fps=5\""),
            ("dvrip://a:%zz@cam/0", "password: bad percent-encoding"),
            ("cvip://u:p@cam/1", "no login"),
        ] {
            let e = Source::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e:?} should contain {want:?}");
        }
    }
}
