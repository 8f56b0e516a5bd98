//! The sans-IO peer: one end of an IVR RPC connection, fed text frames and
//! the time, returning what to do. It enforces the seed's five disconnect
//! rules, keeps a seq counter per direction, never pipelines (calls wait in
//! a local queue while one is outstanding), and hands the peer's requests
//! to the application one at a time, in arrival order.

use crate::message::{Malformed, Message, Resp, RpcError};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The seed's 20 s response limit.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

/// The five disconnect rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// 1: a response whose seq is not the outstanding request's.
    SeqMismatch = 1,
    /// 2: a new request while the previous one is unanswered.
    Pipelined = 2,
    /// 3: no response within 20 s.
    Timeout = 3,
    /// 4: a request for a method that does not exist.
    UnknownMethod = 4,
    /// 5: a malformed packet.
    Malformed = 5,
}

impl Rule {
    pub fn number(self) -> u8 {
        self as u8
    }
    pub fn name(self) -> &'static str {
        match self {
            Rule::SeqMismatch => "response seq mismatch",
            Rule::Pipelined => "request before the previous was answered",
            Rule::Timeout => "no response in time",
            Rule::UnknownMethod => "unknown method",
            Rule::Malformed => "malformed packet",
        }
    }
}

/// Why the connection must close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("IVR RPC rule {} ({}): {detail}", rule.number(), rule.name())]
pub struct Close {
    pub rule: Rule,
    pub detail: String,
}

impl Close {
    /// The reason for the WebSocket close frame: at most 123 bytes (the
    /// frame's limit), cut on a character boundary.
    pub fn frame_reason(&self) -> String {
        let full = self.to_string();
        if full.len() <= 123 {
            return full;
        }
        let mut end = 120;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &full[..end])
    }
}

/// Identifies a call of ours until its response arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallId(pub u64);

/// What the application must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this text frame.
    Send(String),
    /// The peer calls `method`; answer with [`Peer::answer`] (`seq` identifies it).
    Request { seq: u64, method: String, params: Option<Value> },
    /// The peer sent an event (no answer).
    Event { name: String, params: Option<Value> },
    /// Our call got its answer.
    Response { call: CallId, method: String, result: Result<Resp, RpcError> },
    /// Our call will never be answered: the connection closed first.
    Abandoned { call: CallId, method: String },
    /// Close the connection (and say why in the close frame).
    Close(Close),
}

struct Outstanding {
    call: CallId,
    seq: u64,
    method: String,
    deadline: Instant,
}

struct Queued {
    call: CallId,
    method: String,
    params: Option<Value>,
}

/// One end of a connection.
pub struct Peer {
    /// The methods this end serves; shared by every peer of one kind (a
    /// cloud holds one per device session).
    served: Arc<HashSet<String>>,
    timeout: Duration,
    next_seq: u64,
    next_call: u64,
    outstanding: Option<Outstanding>,
    queue: VecDeque<Queued>,
    owed: Option<u64>,
    closed: Option<Close>,
}

/// Misuse of [`Peer::answer`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no request with seq {0} is waiting for an answer")]
    NotOwed(u64),
    #[error("the connection is closed")]
    Closed,
}

impl Peer {
    /// A peer that serves `methods` (requests for others close the
    /// connection, rule 4), with the seed's 20 s response limit.
    pub fn new<I, S>(methods: I) -> Peer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Peer::serving(Arc::new(methods.into_iter().map(Into::into).collect()))
    }

    fn serving(served: Arc<HashSet<String>>) -> Peer {
        Peer {
            served,
            timeout: RESPONSE_TIMEOUT,
            next_seq: 1,
            next_call: 0,
            outstanding: None,
            queue: VecDeque::new(),
            owed: None,
            closed: None,
        }
    }

    /// The IVC end (serves Keepalive, preview_server, GetFirmware, AlarmNotify).
    pub fn ivc() -> Peer {
        static SERVED: LazyLock<Arc<HashSet<String>>> =
            LazyLock::new(|| Arc::new(crate::catalogue::IVC_METHODS.iter().map(|m| m.to_string()).collect()));
        Peer::serving(SERVED.clone())
    }

    /// The IVT end (serves RTMPPublish … SetRTMPPublishConfig).
    pub fn ivt() -> Peer {
        static SERVED: LazyLock<Arc<HashSet<String>>> =
            LazyLock::new(|| Arc::new(crate::catalogue::IVT_METHODS.iter().map(|m| m.to_string()).collect()));
        Peer::serving(SERVED.clone())
    }

    /// Changes the response limit (tests; the seed says 20 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Peer {
        self.timeout = timeout;
        self
    }

    pub fn closed(&self) -> Option<&Close> {
        self.closed.as_ref()
    }

    /// When [`Peer::tick`] must next be called (the outstanding call's deadline).
    pub fn deadline(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.deadline)
    }

    /// Calls waiting behind the outstanding one.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Calls `method` on the peer: sent now if nothing is outstanding,
    /// else queued (never pipelined, rule 2).
    pub fn call(&mut self, method: &str, params: Option<Value>, now: Instant) -> (CallId, Vec<Action>) {
        let call = CallId(self.next_call);
        self.next_call += 1;
        if self.closed.is_some() {
            return (call, vec![Action::Abandoned { call, method: method.to_owned() }]);
        }
        self.queue.push_back(Queued { call, method: method.to_owned(), params });
        let mut out = Vec::new();
        self.pump(now, &mut out);
        (call, out)
    }

    /// Sends an event (events are not requests: they never wait).
    pub fn notify(&mut self, name: &str, params: Option<Value>) -> Vec<Action> {
        if self.closed.is_some() {
            return Vec::new();
        }
        vec![Action::Send(Message::Event { name: name.to_owned(), params }.to_text())]
    }

    /// Answers the peer's request `seq` (the one [`Action::Request`] gave).
    pub fn answer(&mut self, seq: u64, result: Result<Value, RpcError>) -> Result<Vec<Action>, AnswerError> {
        if self.closed.is_some() {
            return Err(AnswerError::Closed);
        }
        if self.owed != Some(seq) {
            return Err(AnswerError::NotOwed(seq));
        }
        self.owed = None;
        let text = match result {
            // Written straight from the tree, not through a `Resp` copy.
            Ok(resp) => crate::message::success_text(seq, resp),
            Err(err) => Message::Failure { seq, err }.to_text(),
        };
        Ok(vec![Action::Send(text)])
    }

    /// Feeds one received text frame.
    pub fn receive(&mut self, text: &str, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed.is_some() {
            return out;
        }
        match Message::parse(text) {
            Err(Malformed(why)) => self.close(Rule::Malformed, why, &mut out),
            Ok(Message::Request { method, params, seq }) => {
                if let Some(prev) = self.owed {
                    self.close(
                        Rule::Pipelined,
                        format!("request {method} (seq {seq}) while seq {prev} is unanswered"),
                        &mut out,
                    );
                } else if !self.served.contains(&method) {
                    self.close(Rule::UnknownMethod, format!("no method {method:?} (seq {seq})"), &mut out);
                } else {
                    self.owed = Some(seq);
                    out.push(Action::Request { seq, method, params });
                }
            }
            Ok(Message::Event { name, params }) => out.push(Action::Event { name, params }),
            Ok(Message::Success { seq, resp }) => self.response(seq, Ok(resp), now, &mut out),
            Ok(Message::Failure { seq, err }) => self.response(seq, Err(err), now, &mut out),
        }
        out
    }

    /// Checks the response limit (rule 3).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(o) = &self.outstanding {
            if self.closed.is_none() && now >= o.deadline {
                let detail = format!("{} (seq {}) unanswered after {:?}", o.method, o.seq, self.timeout);
                self.close(Rule::Timeout, detail, &mut out);
            }
        }
        out
    }

    /// Closes from our side for a reason other than the rules (shutdown).
    pub fn abandon_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.fail_calls(&mut out);
        out
    }

    fn response(&mut self, seq: u64, result: Result<Resp, RpcError>, now: Instant, out: &mut Vec<Action>) {
        match self.outstanding.take() {
            Some(o) if o.seq == seq => {
                out.push(Action::Response { call: o.call, method: o.method, result });
                self.pump(now, out);
            }
            Some(o) => {
                let detail = format!("response seq {seq}, but {} was sent with seq {}", o.method, o.seq);
                self.outstanding = Some(o);
                self.close(Rule::SeqMismatch, detail, out);
            }
            None => self.close(Rule::SeqMismatch, format!("response seq {seq} with no request outstanding"), out),
        }
    }

    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.outstanding.is_some() {
            return;
        }
        if let Some(q) = self.queue.pop_front() {
            let seq = self.next_seq;
            self.next_seq += 1;
            out.push(Action::Send(Message::Request { method: q.method.clone(), params: q.params, seq }.to_text()));
            self.outstanding = Some(Outstanding { call: q.call, seq, method: q.method, deadline: now + self.timeout });
        }
    }

    fn close(&mut self, rule: Rule, detail: String, out: &mut Vec<Action>) {
        let c = Close { rule, detail };
        self.closed = Some(c.clone());
        out.push(Action::Close(c));
        self.fail_calls(out);
    }

    fn fail_calls(&mut self, out: &mut Vec<Action>) {
        if let Some(o) = self.outstanding.take() {
            out.push(Action::Abandoned { call: o.call, method: o.method });
        }
        for q in self.queue.drain(..) {
            out.push(Action::Abandoned { call: q.call, method: q.method });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sent(actions: &[Action]) -> Vec<Message> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(t) => Some(Message::parse(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn closed_by(actions: &[Action]) -> Option<Rule> {
        actions.iter().find_map(|a| match a {
            Action::Close(c) => Some(c.rule),
            _ => None,
        })
    }

    #[test]
    fn calls_are_queued_never_pipelined_and_seq_counts_from_one() {
        let t = Instant::now();
        let mut ivt = Peer::ivt();
        let (a, out) = ivt.call("Keepalive", Some(json!({"state": 1, "channels": []})), t);
        assert_eq!(
            sent(&out),
            [Message::Request {
                method: "Keepalive".into(),
                params: Some(json!({"state": 1, "channels": []})),
                seq: 1
            }]
        );
        let (b, out) = ivt.call("GetFirmware", None, t);
        assert!(out.is_empty(), "queued behind the outstanding call");
        assert_eq!(ivt.queued(), 1);
        let out = ivt.receive(r#"{"seq": 1, "resp": {}}"#, t);
        assert_eq!(out[0], Action::Response { call: a, method: "Keepalive".into(), result: Ok(Resp::of(&json!({}))) });
        assert_eq!(sent(&out), [Message::Request { method: "GetFirmware".into(), params: None, seq: 2 }]);
        let out = ivt.receive(r#"{"seq": 2, "err": {"code": 1, "msg": "no firmware"}}"#, t);
        assert_eq!(
            out[0],
            Action::Response { call: b, method: "GetFirmware".into(), result: Err(RpcError::new(1, "no firmware")) }
        );
    }

    #[test]
    fn requests_are_handed_over_one_at_a_time_and_answered() {
        let t = Instant::now();
        let mut ivc = Peer::ivc();
        let out = ivc.receive(r#"{"req": "Keepalive", "params": {"state": 1, "channels": []}, "seq": 7}"#, t);
        assert!(matches!(&out[..], [Action::Request { seq: 7, method, .. }] if method == "Keepalive"));
        assert_eq!(ivc.answer(8, Ok(json!({}))), Err(AnswerError::NotOwed(8)));
        let out = ivc.answer(7, Ok(json!({}))).unwrap();
        assert_eq!(sent(&out), [Message::Success { seq: 7, resp: Resp::of(&json!({})) }]);
        // Each direction has its own counter: our own calls start at 1.
        let mut ivc2 = Peer::ivt();
        let (_, out) = ivc2.call("x", None, t);
        assert_eq!(sent(&out)[0], Message::Request { method: "x".into(), params: None, seq: 1 });
    }

    #[test]
    fn rule_1_response_seq_mismatch() {
        let t = Instant::now();
        let mut p = Peer::ivt();
        let (call, _) = p.call("Keepalive", None, t);
        let out = p.receive(r#"{"seq": 9, "resp": {}}"#, t);
        assert_eq!(closed_by(&out), Some(Rule::SeqMismatch));
        assert!(out.contains(&Action::Abandoned { call, method: "Keepalive".into() }));
        let mut q = Peer::ivt();
        assert_eq!(
            closed_by(&q.receive(r#"{"seq": 1, "resp": {}}"#, t)),
            Some(Rule::SeqMismatch),
            "nothing outstanding"
        );
    }

    #[test]
    fn rule_2_pipelined_requests() {
        let t = Instant::now();
        let mut p = Peer::ivt();
        p.receive(r#"{"req": "RebootChannel", "params": {"channel": 0}, "seq": 1}"#, t);
        let out = p.receive(r#"{"req": "RebootChannel", "params": {"channel": 0}, "seq": 2}"#, t);
        assert_eq!(closed_by(&out), Some(Rule::Pipelined));
        assert_eq!(p.answer(1, Ok(json!({}))), Err(AnswerError::Closed));
    }

    #[test]
    fn rule_3_timeout_with_the_deadline_exposed() {
        let t = Instant::now();
        let mut p = Peer::ivt().with_timeout(Duration::from_millis(500));
        let (_, _) = p.call("Keepalive", None, t);
        let (queued, _) = p.call("GetFirmware", None, t);
        assert_eq!(p.deadline(), Some(t + Duration::from_millis(500)));
        assert!(p.tick(t + Duration::from_millis(499)).is_empty());
        let out = p.tick(t + Duration::from_millis(500));
        assert_eq!(closed_by(&out), Some(Rule::Timeout));
        assert!(out.contains(&Action::Abandoned { call: queued, method: "GetFirmware".into() }));
        assert_eq!(RESPONSE_TIMEOUT, Duration::from_secs(20));
    }

    #[test]
    fn rule_4_unknown_method_for_this_side() {
        let t = Instant::now();
        // RTMPPublish exists, but only the IVT serves it.
        let out = Peer::ivc().receive(r#"{"req": "RTMPPublish", "params": {}, "seq": 1}"#, t);
        assert_eq!(closed_by(&out), Some(Rule::UnknownMethod));
        let out = Peer::ivt().receive(r#"{"req": "FormatDisk", "seq": 1}"#, t);
        assert_eq!(closed_by(&out), Some(Rule::UnknownMethod));
    }

    #[test]
    fn rule_5_malformed_and_close_reasons_fit_a_frame() {
        let t = Instant::now();
        let mut p = Peer::ivc();
        let out = p.receive(&format!("{{\"req\": \"Keepalive\", \"seq\": 1, \"{}\": 1}}", "x".repeat(300)), t);
        let Some(Action::Close(c)) = out.first() else { panic!("{out:?}") };
        assert_eq!(c.rule, Rule::Malformed);
        assert!(c.to_string().starts_with("IVR RPC rule 5 (malformed packet)"));
        assert!(c.frame_reason().len() <= 123);
        assert!(p.receive(r#"{"seq": 1, "resp": {}}"#, t).is_empty(), "closed peers ignore input");
    }

    #[test]
    fn events_pass_both_ways_without_waiting() {
        let t = Instant::now();
        let mut p = Peer::ivc();
        let _ = p.call("RTMPPublish", Some(json!({})), t);
        let out = p.notify("SyncTime", Some(json!({"datetime": "2016-12-05T02:15:32", "offset": 5})));
        assert_eq!(sent(&out).len(), 1, "an event is sent even while a call is outstanding");
        let mut q = Peer::ivt();
        assert!(
            matches!(&q.receive(r#"{"event": "UpgradeFirmware"}"#, t)[..], [Action::Event { name, params: None }] if name == "UpgradeFirmware")
        );
    }

    proptest::proptest! {
        /// Whatever the peer sends and however often we call, the peer never
        /// panics, never has two of our requests on the wire, and once
        /// closed stays closed and quiet.
        #[test]
        fn never_pipelines_and_never_panics(
            steps in proptest::collection::vec((0u8..6, 0u64..4, "[a-zA-Z{}\\[\\]\":,0-9 ]{0,40}"), 1..60)
        ) {
            let t = Instant::now();
            let mut p = Peer::ivt().with_timeout(Duration::from_secs(5));
            let mut in_flight: Option<u64> = None;
            for (kind, n, junk) in steps {
                let out = match kind {
                    0 => p.call("Keepalive", None, t).1,
                    1 => p.receive(&format!(r#"{{"seq": {n}, "resp": {{}}}}"#), t),
                    2 => p.receive(&format!(r#"{{"req": "RebootChannel", "params": {{"channel": 0}}, "seq": {n}}}"#), t),
                    3 => p.answer(n, Ok(json!({}))).unwrap_or_default(),
                    4 => p.receive(&junk, t),
                    _ => p.tick(t + Duration::from_secs(n * 2)),
                };
                for a in &out {
                    match a {
                        Action::Send(text) => {
                            if let Ok(Message::Request { seq, .. }) = Message::parse(text) {
                                proptest::prop_assert!(in_flight.is_none(), "pipelined: {seq} while {in_flight:?}");
                                in_flight = Some(seq);
                            }
                        }
                        Action::Response { .. } | Action::Abandoned { .. } => in_flight = None,
                        _ => {}
                    }
                }
                if p.closed().is_some() {
                    let after = p.receive(r#"{"seq": 1, "resp": {}}"#, t);
                    proptest::prop_assert!(after.is_empty(), "closed peer answered: {:?}", after);
                }
            }
        }
    }
}
