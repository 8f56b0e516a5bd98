//! What keeps one peer from taking the cloud: token buckets for device
//! requests, failure windows for logins, the registry of one-time upload
//! URLs (bounded per device, expiring), and names made safe for logs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` per second sustained, `burst` at once.
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Bucket { rate, burst: burst.max(1.0), tokens: burst.max(1.0), at: Instant::now() }
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Failures per key in a fixed window; past `limit`, the key is refused
/// until the window ends. Bounded: at most `max_keys` keys are tracked (a
/// full table forgets the windows that ended, then refuses to track more,
/// which the caller's other key still covers).
pub(crate) struct Throttle {
    limit: u32,
    window: Duration,
    max_keys: usize,
    keys: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Throttle {
    pub(crate) fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Throttle { limit, window, max_keys, keys: Mutex::default() }
    }

    /// `Err(retry_after)` while `key` is throttled.
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        let keys = self.keys.lock().expect("throttle lock");
        match keys.get(key) {
            Some((start, n)) if *n >= self.limit && start.elapsed() < self.window => Err(self.window - start.elapsed()),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns the failures in the window so far.
    pub(crate) fn fail(&self, key: &str) -> u32 {
        let mut keys = self.keys.lock().expect("throttle lock");
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            let window = self.window;
            keys.retain(|_, (start, _)| start.elapsed() < window);
            if keys.len() >= self.max_keys {
                return 0;
            }
        }
        let e = keys.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.window {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1
    }

    /// The limit per window.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }
}

/// Logins waiting for argon2, bounded per source address and in all, so
/// one address flooding the gateway cannot queue ahead of every device.
#[derive(Debug)]
pub(crate) struct Pending {
    per_addr: usize,
    total: usize,
    inner: Mutex<(HashMap<std::net::IpAddr, usize>, usize)>,
}

/// One pending login; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct PendingGuard<'a>(&'a Pending, std::net::IpAddr);

impl Pending {
    pub(crate) fn new(per_addr: usize, total: usize) -> Self {
        Pending { per_addr, total, inner: Mutex::default() }
    }

    /// A place in the queue, or why not.
    pub(crate) fn enter(&self, addr: std::net::IpAddr) -> Result<PendingGuard<'_>, &'static str> {
        let mut g = self.inner.lock().expect("pending lock");
        let (map, total) = &mut *g;
        if *total >= self.total {
            return Err("too many logins are being checked; try again shortly");
        }
        let n = map.entry(addr).or_insert(0);
        if *n >= self.per_addr {
            return Err("too many logins from this address are being checked at once");
        }
        *n += 1;
        *total += 1;
        Ok(PendingGuard(self, addr))
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.inner.lock().expect("pending lock");
        let (map, total) = &mut *g;
        *total -= 1;
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// What an upload URL is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upload {
    Alarm { event_id: i64 },
    Preview,
}

/// One-time upload URLs: at most `per_device` unused per device (issuing
/// one more drops the oldest), each working for `ttl`, all of a device's
/// dropped when it is deleted.
pub(crate) struct UploadUrls {
    per_device: usize,
    ttl: Duration,
    inner: Mutex<Urls>,
}

#[derive(Default)]
struct Urls {
    by_token: HashMap<String, (String, Upload, Instant)>,
    by_device: HashMap<String, VecDeque<String>>,
}

impl UploadUrls {
    pub(crate) fn new(per_device: usize, ttl: Duration) -> Self {
        UploadUrls { per_device: per_device.max(1), ttl, inner: Mutex::default() }
    }

    /// A new token for `login_code`'s upload.
    pub(crate) fn issue(&self, login_code: &str, what: Upload) -> String {
        let t = crate::server::token();
        let mut u = self.inner.lock().expect("uploads lock");
        u.by_token.insert(t.clone(), (login_code.to_owned(), what, Instant::now()));
        let q = u.by_device.entry(login_code.to_owned()).or_default();
        q.push_back(t.clone());
        let dropped = if q.len() > self.per_device { q.pop_front() } else { None };
        if let Some(d) = dropped {
            u.by_token.remove(&d);
        }
        t
    }

    /// The token's device and purpose, taken (it works once); `None` when
    /// unknown, used or expired.
    pub(crate) fn take(&self, token: &str) -> Option<(String, Upload)> {
        let mut u = self.inner.lock().expect("uploads lock");
        let (lc, what, at) = u.by_token.remove(token)?;
        if let Some(q) = u.by_device.get_mut(&lc) {
            q.retain(|t| t != token);
            if q.is_empty() {
                u.by_device.remove(&lc);
            }
        }
        (at.elapsed() < self.ttl).then_some((lc, what))
    }

    /// Drops a deleted device's URLs.
    pub(crate) fn forget(&self, login_code: &str) {
        let mut u = self.inner.lock().expect("uploads lock");
        for t in u.by_device.remove(login_code).unwrap_or_default() {
            u.by_token.remove(&t);
        }
    }

    /// Drops expired URLs (housekeeping).
    pub(crate) fn expire(&self) {
        let mut u = self.inner.lock().expect("uploads lock");
        let ttl = self.ttl;
        let Urls { by_token, by_device } = &mut *u;
        by_device.retain(|_, q| {
            while q.front().is_some_and(|t| by_token.get(t).is_none_or(|e| e.2.elapsed() >= ttl)) {
                if let Some(t) = q.pop_front() {
                    by_token.remove(&t);
                }
            }
            !q.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().by_token.len()
    }
}

/// `s` as it may go into a log line: printable ASCII kept, anything else
/// (control characters, NUL, bidi overrides, any non-ASCII) escaped as
/// `\u{…}`, cut at 64 characters.
pub fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 64 {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// Why a login code is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("login_code: 1 to 128 bytes (this one has {0})")]
    Length(usize),
    #[error("login_code: {0:?} (U+{code:04X}) is not allowed (no control characters, bidi controls, '/' or '\\')", code = *.0 as u32)]
    Char(char),
}

/// Checks a login code: 1–128 bytes, no control character, NUL, bidi
/// override or isolate, `/` or `\`.
pub fn check_login_code(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > 128 {
        return Err(NameError::Length(s.len()));
    }
    match s.chars().find(|c| bad_char(*c) || *c == '/' || *c == '\\') {
        Some(c) => Err(NameError::Char(c)),
        None => Ok(()),
    }
}

/// Whether `v` may be stored and shown as a label (a model, a name): at
/// most `max` bytes, no control or bidi characters.
pub(crate) fn plain_label(v: &str, max: usize) -> bool {
    v.len() <= max && !v.chars().any(bad_char)
}

/// Control characters and the Unicode bidi controls (which make a name
/// display as something else).
pub(crate) fn bad_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = Bucket::new(1000.0, 3.0);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take(), "the burst is spent");
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.take(), "refilled");
    }

    #[test]
    fn throttle_refuses_past_the_limit_and_forgets_after_the_window() {
        let t = Throttle::new(2, Duration::from_millis(50), 2);
        assert!(t.check("a").is_ok());
        assert_eq!(t.fail("a"), 1);
        assert_eq!(t.fail("a"), 2);
        assert!(t.check("a").is_err());
        assert!(t.check("b").is_ok());
        t.fail("b");
        assert_eq!(t.fail("c"), 0, "the table is full");
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.check("a").is_ok());
        assert_eq!(t.fail("c"), 1, "ended windows make room");
    }

    #[test]
    fn pending_logins_are_bounded_per_address_and_in_all() {
        let p = Pending::new(2, 3);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let g1 = p.enter(a).unwrap();
        let _g2 = p.enter(a).unwrap();
        assert!(p.enter(a).unwrap_err().contains("this address"));
        let _g3 = p.enter(b).unwrap();
        assert!(p.enter(b).unwrap_err().contains("too many logins are being checked"));
        drop(g1);
        assert!(p.enter(a).is_ok());
    }

    #[test]
    fn upload_urls_are_bounded_one_time_and_expire() {
        let u = UploadUrls::new(2, Duration::from_millis(40));
        let a = u.issue("d", Upload::Preview);
        let b = u.issue("d", Upload::Alarm { event_id: 7 });
        let c = u.issue("d", Upload::Preview);
        assert_eq!(u.len(), 2, "the oldest was dropped");
        assert!(u.take(&a).is_none());
        assert_eq!(u.take(&b), Some(("d".into(), Upload::Alarm { event_id: 7 })));
        assert!(u.take(&b).is_none(), "once");
        let e = u.issue("e", Upload::Preview);
        u.forget("e");
        assert!(u.take(&e).is_none(), "gone with its device");
        std::thread::sleep(Duration::from_millis(50));
        u.expire();
        assert_eq!(u.len(), 0);
        assert!(u.take(&c).is_none(), "expired");
    }

    #[test]
    fn names_are_checked_and_shown_safely() {
        assert!(check_login_code("cam-01.site_a").is_ok());
        for bad in ["", "a/b", "a\\b", "a\0b", "a\nb", "evil\u{202e}gpj", &"x".repeat(129)] {
            assert!(check_login_code(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_login_code("a/b").unwrap_err().to_string(),
            "login_code: '/' (U+002F) is not allowed (no control characters, bidi controls, '/' or '\\')"
        );
        {}
        assert_eq!(shown("a\r\nb\u{202e}"), "a\\u{d}\\u{a}b\\u{202e}");
        assert_eq!(shown(&"y".repeat(70)).chars().count(), 65);
    }
}
