//! XML-RPC messages: a tolerant parser that recovers what the seed's (and
//! real devices') malformed XML meant and reports each repair, and a strict
//! writer whose output any XML-RPC library reads.
//!
//! Parsing is two steps: quick-xml tokenizes without checking that end tags
//! match (the seed closes `<boolean>` with `</int>`), a pre-pass fixes
//! transposed closing tags and splits tags truncated by a line break
//! (`</mem` + newline + `<member>`), then a recursive descent builds the
//! value tree, repairing what is missing or stray.

use crate::value::{parse_int_text, Struct, Value};
use base64::Engine as _;
use quick_xml::events::Event;
use std::fmt::Write as _;

/// A methodCall, methodResponse or fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Call { method: String, params: Vec<Value> },
    Response { params: Vec<Value> },
    Fault { code: i64, message: String },
}

/// Something the parser had to fix, with the byte offset where it saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub offset: usize,
    pub what: String,
    /// The same repair made this many times in a row (`</param>` ×150).
    pub times: u32,
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.what)?;
        if self.times > 1 {
            write!(f, " (×{})", self.times)?;
        }
        Ok(())
    }
}

fn push_repair(repairs: &mut Vec<Repair>, offset: usize, what: String) {
    if let Some(last) = repairs.last_mut() {
        if last.what == what {
            last.times += 1;
            return;
        }
    }
    repairs.push(Repair { offset, what, times: 1 });
}

fn finish(mut repairs: Vec<Repair>) -> Vec<Repair> {
    repairs.sort_by_key(|r| r.offset);
    repairs
}

#[derive(Clone, Debug)]
pub struct Parsed<T> {
    pub value: T,
    pub repairs: Vec<Repair>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no <methodCall>, <methodResponse> or <{0}> element in the body")]
    NoRoot(&'static str),
    #[error("body is not UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("byte {offset}: {what}")]
    Bad { offset: usize, what: String },
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open(String),
    Close(String),
    Text(String),
}

struct Cursor {
    toks: Vec<(Tok, usize)>,
    i: usize,
    repairs: Vec<Repair>,
    end: usize,
    /// A transposed `</value></struct>` already closed the value.
    value_closed: bool,
}

fn lname(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim().to_ascii_lowercase()
}

/// Tokens of `body`, with the repairs tokenizing needed.
type Tokens = Vec<(Tok, usize)>;

fn tokenize(body: &[u8]) -> Result<(Tokens, Vec<Repair>), ParseError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ParseError::NotUtf8(e.valid_up_to()));
    }
    let mut r = quick_xml::Reader::from_reader(body);
    let cfg = r.config_mut();
    cfg.check_end_names = false;
    cfg.allow_unmatched_ends = true;
    cfg.allow_dangling_amp = true;
    cfg.expand_empty_elements = true;
    cfg.trim_text(false);
    let mut toks: Vec<(Tok, usize)> = Vec::with_capacity(body.len() / 12);
    let mut repairs = Vec::new();
    let mut text = String::new();
    let mut text_at = 0usize;
    loop {
        let at = r.buffer_position() as usize;
        let ev = match r.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                push_repair(&mut repairs, at, format!("ignored the rest of the body: {e}"));
                break;
            }
        };
        // Whitespace between elements is layout, except as the content of
        // a string or value.
        let flush = |toks: &mut Vec<(Tok, usize)>, text: &mut String, at: usize| {
            let keep = !text.trim().is_empty()
                || !text.is_empty() && matches!(toks.last(), Some((Tok::Open(n), _)) if n == "string" || n == "value");
            if keep {
                toks.push((Tok::Text(std::mem::take(text)), at));
            } else {
                text.clear();
            }
        };
        match ev {
            Event::Eof => {
                flush(&mut toks, &mut text, text_at);
                break;
            }
            Event::Start(s) => {
                flush(&mut toks, &mut text, text_at);
                split_name(&lname(s.name().as_ref()), at, true, &mut toks, &mut repairs);
            }
            Event::End(e) => {
                flush(&mut toks, &mut text, text_at);
                split_name(&lname(e.name().as_ref()), at, false, &mut toks, &mut repairs);
            }
            Event::Text(t) => {
                if text.is_empty() {
                    text_at = at;
                }
                text.push_str(&String::from_utf8_lossy(&t));
            }
            Event::CData(c) => {
                if text.is_empty() {
                    text_at = at;
                }
                text.push_str(&String::from_utf8_lossy(&c));
            }
            Event::GeneralRef(g) => {
                if text.is_empty() {
                    text_at = at;
                }
                let name = String::from_utf8_lossy(&g).into_owned();
                match g.resolve_char_ref() {
                    Ok(Some(c)) => text.push(c),
                    _ => match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => text.push_str(s),
                        None => {
                            push_repair(&mut repairs, at, format!("unknown entity &{name}; kept as text"));
                            let _ = write!(text, "&{name};");
                        }
                    },
                }
            }
            Event::Empty(_) | Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    Ok((toks, repairs))
}

/// A tag name holding `<` was cut by a line break before its `>`
/// (`</value></mem` + newline + `<member>`): the part before is a truncated
/// tag, the part after a new one.
fn split_name(name: &str, at: usize, open: bool, toks: &mut Vec<(Tok, usize)>, repairs: &mut Vec<Repair>) {
    let mut parts = name.split('<');
    let first = parts.next().unwrap_or("").trim().to_string();
    let tok = |n: String, open: bool| if open { Tok::Open(n) } else { Tok::Close(n) };
    let mut rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        toks.push((tok(first, open), at));
        return;
    }
    let slash = if open { "" } else { "/" };
    push_repair(repairs, at, format!("tag <{slash}{first}> has no '>': read up to the next '<'"));
    toks.push((tok(first, open), at));
    for part in rest.drain(..) {
        let p = part.trim();
        if let Some(c) = p.strip_prefix('/') {
            toks.push((Tok::Close(c.trim().to_string()), at));
        } else if !p.is_empty() {
            toks.push((Tok::Open(p.to_string()), at));
        }
    }
}

/// Closing tags that arrive in swapped order (`</value></struct>` where
/// `</struct></value>` was meant) are put back in order.
fn fix_transposed(toks: &mut [(Tok, usize)], repairs: &mut Vec<Repair>) {
    let mut stack: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Open(n) => stack.push(n.clone()),
            Tok::Close(a) => {
                let n = stack.len();
                if n >= 2 && stack[n - 1] != *a && stack[n - 2] == *a {
                    if let Some((Tok::Close(b), _)) = toks.get(i + 1) {
                        if *b == stack[n - 1] {
                            let what = format!("closing tags out of order: </{a}></{b}> read as </{b}></{a}>");
                            push_repair(repairs, toks[i].1, what);
                            toks.swap(i, i + 1);
                            stack.truncate(n - 2);
                            i += 2;
                            continue;
                        }
                    }
                }
                if let Some(p) = stack.iter().rposition(|s| s == a) {
                    stack.truncate(p);
                }
            }
            Tok::Text(_) => {}
        }
        i += 1;
    }
}

const SCALARS: &[&str] =
    &["int", "i4", "i8", "uint", "boolean", "string", "double", "datetime.iso8601", "base64", "nil"];

impl Cursor {
    fn new(body: &[u8]) -> Result<Cursor, ParseError> {
        let (mut toks, mut repairs) = tokenize(body)?;
        fix_transposed(&mut toks, &mut repairs);
        Ok(Cursor { toks, i: 0, repairs, end: body.len(), value_closed: false })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.0)
    }

    fn at(&self) -> usize {
        self.toks.get(self.i).map(|t| t.1).unwrap_or(self.end)
    }

    fn repair(&mut self, what: String) {
        let offset = self.at();
        push_repair(&mut self.repairs, offset, what);
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).map(|t| t.0.clone());
        self.i += 1;
        t
    }

    fn is_open(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Open(n)) if n == name)
    }

    fn is_close(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Close(n)) if n == name)
    }

    /// Consumes `</name>`; a truncated `</nam` counts (with a repair); if
    /// something else comes, the close is taken as missing.
    fn close(&mut self, name: &str) {
        match self.peek() {
            Some(Tok::Close(n)) if n == name => {
                self.i += 1;
            }
            Some(Tok::Close(n)) if !n.is_empty() && name.starts_with(n.as_str()) => {
                let n = n.clone();
                self.repair(format!("</{n}> read as </{name}>"));
                self.i += 1;
            }
            Some(t) => {
                let t = describe(t);
                self.repair(format!("missing </{name}> before {t}"));
            }
            None => self.repair(format!("missing </{name}> at the end")),
        }
    }

    /// Skips stray text between elements, reporting it.
    fn skip_text(&mut self) {
        while let Some(Tok::Text(t)) = self.peek() {
            if !t.trim().is_empty() {
                let t = t.clone();
                self.repair(format!("stray text {:?} ignored", short(&t)));
            }
            self.i += 1;
        }
    }

    fn text_until_tag(&mut self) -> String {
        let mut s = String::new();
        while let Some(Tok::Text(t)) = self.peek() {
            s.push_str(t);
            self.i += 1;
        }
        s
    }

    fn params(&mut self) -> Vec<Value> {
        // positioned after <params>
        let mut out = Vec::new();
        loop {
            self.skip_text();
            match self.peek() {
                Some(Tok::Open(n)) if n == "param" => {
                    self.i += 1;
                    self.skip_text();
                    if self.is_close("param") {
                        self.repair("empty <param> read as an empty string".into());
                        out.push(Value::Str(String::new()));
                    } else {
                        out.push(self.value_or_bare());
                    }
                    self.skip_text();
                    self.close("param");
                }
                Some(Tok::Open(n))
                    if n == "value" || SCALARS.contains(&n.as_str()) || n == "struct" || n == "array" =>
                {
                    self.repair("value outside a <param>".into());
                    out.push(self.value_or_bare());
                }
                Some(Tok::Close(n)) if n == "params" => {
                    self.i += 1;
                    return out;
                }
                Some(Tok::Close(n)) if n == "param" => {
                    self.repair("stray </param> ignored".into());
                    self.i += 1;
                }
                Some(Tok::Close(n)) => {
                    let n = n.clone();
                    self.repair(format!("missing </params> before </{n}>"));
                    return out;
                }
                Some(Tok::Open(n)) => {
                    let n = n.clone();
                    self.repair(format!("missing </params> before <{n}>"));
                    return out;
                }
                Some(Tok::Text(_)) => unreachable!("skipped"),
                None => {
                    self.repair("missing </params> at the end".into());
                    return out;
                }
            }
        }
    }

    /// A `<value>`, or a typed element where `<value>` was left out.
    fn value_or_bare(&mut self) -> Value {
        match self.peek() {
            Some(Tok::Open(n)) if n == "value" => {
                self.i += 1;
                self.value_body()
            }
            Some(Tok::Open(n)) => {
                let n = n.clone();
                self.repair(format!("<{n}> without <value> around it"));
                self.i += 1;
                self.typed(&n)
            }
            _ => {
                self.repair("missing value, read as an empty string".into());
                Value::Str(String::new())
            }
        }
    }

    /// After `<value>`: a typed element or bare text, then `</value>`.
    fn value_body(&mut self) -> Value {
        let text = self.text_until_tag();
        let v = match self.peek().cloned() {
            Some(Tok::Close(n)) if n == "value" => Value::Str(text),
            Some(Tok::Open(n)) => {
                if !text.trim().is_empty() {
                    let t = short(&text);
                    self.repair(format!("stray text {t:?} ignored"));
                }
                self.i += 1;
                self.typed(&n)
            }
            _ => Value::Str(text),
        };
        self.skip_text();
        if std::mem::take(&mut self.value_closed) {
            return v;
        }
        self.close("value");
        v
    }

    /// After `<type>`: content and `</type>`.
    fn typed(&mut self, ty: &str) -> Value {
        match ty {
            "struct" => self.struct_body(),
            "array" => self.array_body(),
            _ => {
                let text = self.text_until_tag();
                match self.peek().cloned() {
                    Some(Tok::Close(n)) if n == ty => {
                        self.i += 1;
                    }
                    Some(Tok::Close(n)) => {
                        // `<boolean>1</int></boolean>`, `<name>x</string>`
                        self.i += 1;
                        if self.is_close(ty) {
                            self.repair(format!("stray </{n}> inside <{ty}> ignored"));
                            self.i += 1;
                        } else if n != "value" {
                            self.repair(format!("<{ty}> closed by </{n}>"));
                        } else {
                            self.repair(format!("missing </{ty}>"));
                            self.i -= 1;
                        }
                    }
                    _ => self.repair(format!("missing </{ty}>")),
                }
                self.scalar(ty, text)
            }
        }
    }

    fn scalar(&mut self, ty: &str, text: String) -> Value {
        let t = text.trim();
        let int = |c: &mut Cursor, t: &str| -> Option<i64> {
            if t.is_empty() {
                c.repair(format!("empty <{ty}> read as 0"));
                return Some(0);
            }
            let v = parse_int_text(t);
            if v.is_none() {
                c.repair(format!("<{ty}> holds {:?}, not a number: read as a string", short(t)));
            }
            v
        };
        match ty {
            "int" | "i4" | "i8" => match int(self, t) {
                Some(v) => match i32::try_from(v) {
                    Ok(v) if ty == "i4" => Value::I4(v),
                    Ok(v) => Value::Int(v),
                    Err(_) => {
                        self.repair(format!("<{ty}> {v} out of 32-bit range: read as a double"));
                        Value::Double(v as f64)
                    }
                },
                None => Value::Str(text),
            },
            "uint" => match int(self, t) {
                Some(v) => match u32::try_from(v) {
                    Ok(v) => Value::UInt(v),
                    Err(_) => {
                        self.repair(format!("<uint> {v} out of range: read as a double"));
                        Value::Double(v as f64)
                    }
                },
                None => Value::Str(text),
            },
            "boolean" => match t {
                "1" | "true" => Value::Bool(true),
                "0" | "false" | "" => Value::Bool(false),
                _ => {
                    self.repair(format!("<boolean> holds {:?}: read as a string", short(t)));
                    Value::Str(text)
                }
            },
            "string" => Value::Str(text),
            "double" => match t.parse::<f64>() {
                Ok(d) => Value::Double(d),
                Err(_) => {
                    self.repair(format!("<double> holds {:?}: read as a string", short(t)));
                    Value::Str(text)
                }
            },
            "datetime.iso8601" => Value::DateTime(t.to_string()),
            "base64" => {
                let clean: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()) {
                    Ok(b) => Value::Base64(b),
                    Err(e) => {
                        self.repair(format!("<base64> does not decode ({e}): read as a string"));
                        Value::Str(text)
                    }
                }
            }
            "nil" => Value::Nil,
            other => {
                // `<iint>64</iint>`: an unknown type, read by its content.
                if let Some(v) = parse_int_text(t).and_then(|v| i32::try_from(v).ok()) {
                    self.repair(format!("unknown type <{other}> with {t}: read as int"));
                    Value::Int(v)
                } else {
                    self.repair(format!("unknown type <{other}>: read as a string"));
                    Value::Str(text)
                }
            }
        }
    }

    fn struct_body(&mut self) -> Value {
        let mut s = Struct::new();
        loop {
            self.skip_text();
            match self.peek().cloned() {
                Some(Tok::Open(n)) if n == "member" => {
                    self.i += 1;
                    self.member(&mut s);
                }
                Some(Tok::Open(n)) if n == "name" => {
                    self.repair("<name> without <member>".into());
                    self.member(&mut s);
                }
                Some(Tok::Close(n)) if n == "struct" => {
                    self.i += 1;
                    break;
                }
                Some(Tok::Close(n)) if n == "member" => {
                    self.repair("stray </member> ignored".into());
                    self.i += 1;
                }
                Some(Tok::Close(n))
                    if n == "value"
                        && matches!(self.toks.get(self.i + 1), Some((Tok::Close(m), _)) if m == "struct") =>
                {
                    self.repair("closing tags out of order: </value></struct> read as </struct></value>".into());
                    self.i += 2;
                    self.value_closed = true;
                    break;
                }
                Some(t) => {
                    let t = describe(&t);
                    self.repair(format!("missing </struct> before {t}"));
                    break;
                }
                None => {
                    self.repair("missing </struct> at the end".into());
                    break;
                }
            }
        }
        Value::Struct(s)
    }

    fn member(&mut self, s: &mut Struct) {
        self.skip_text();
        let name = if self.is_open("name") {
            self.i += 1;
            let n = self.text_until_tag();
            match self.peek().cloned() {
                Some(Tok::Close(c)) if c == "name" => self.i += 1,
                Some(Tok::Close(c)) => {
                    self.repair(format!("<name> closed by </{c}>"));
                    self.i += 1;
                }
                _ => self.repair(format!("missing </name> after {:?}", short(&n))),
            }
            n.trim().to_string()
        } else {
            self.repair("<member> without <name>".into());
            String::new()
        };
        self.skip_text();
        let v = if self.is_open("value") {
            self.i += 1;
            self.value_body()
        } else {
            match self.peek() {
                Some(Tok::Open(t)) if SCALARS.contains(&t.as_str()) || t == "struct" || t == "array" => {
                    self.value_or_bare()
                }
                _ => {
                    self.repair(format!("member {name:?} has no value: read as an empty string"));
                    Value::Str(String::new())
                }
            }
        };
        if s.0.iter().any(|(n, _)| *n == name) {
            self.repair(format!("member {name:?} appears twice; both kept, the first wins"));
        }
        s.0.push((name, v));
        self.skip_text();
        if self.is_close("member") {
            self.i += 1;
        } else if matches!(self.peek(), Some(Tok::Close(n)) if "member".starts_with(n.as_str()) && !n.is_empty()) {
            self.close("member");
        } else {
            let t = self.peek().map(describe).unwrap_or_else(|| "the end".into());
            self.repair(format!("missing </member> before {t}"));
        }
    }

    fn array_body(&mut self) -> Value {
        let mut out = Vec::new();
        self.skip_text();
        match self.peek() {
            Some(Tok::Open(n)) if n == "data" => self.i += 1,
            Some(Tok::Close(n)) if n == "data" => {
                self.repair("</data> right after <array> read as <data>".into());
                self.i += 1;
            }
            _ => self.repair("<array> without <data>".into()),
        }
        loop {
            self.skip_text();
            match self.peek().cloned() {
                Some(Tok::Open(n)) if n == "value" => {
                    self.i += 1;
                    out.push(self.value_body());
                }
                Some(Tok::Open(n)) if SCALARS.contains(&n.as_str()) || n == "struct" || n == "array" => {
                    out.push(self.value_or_bare());
                }
                Some(Tok::Close(n)) if n == "data" => {
                    self.i += 1;
                    self.skip_text();
                    self.close("array");
                    break;
                }
                Some(Tok::Close(n)) if n == "array" => {
                    self.repair("missing </data> before </array>".into());
                    self.i += 1;
                    break;
                }
                Some(t) => {
                    let t = describe(&t);
                    self.repair(format!("missing </data></array> before {t}"));
                    break;
                }
                None => {
                    self.repair("missing </data></array> at the end".into());
                    break;
                }
            }
        }
        Value::Array(out)
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Open(n) => format!("<{n}>"),
        Tok::Close(n) => format!("</{n}>"),
        Tok::Text(s) => format!("text {:?}", short(s)),
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Parses a methodCall, methodResponse or fault, tolerating the seed's
/// mistakes; `repairs` is empty for well-formed input.
pub fn parse(body: &[u8]) -> Result<Parsed<Message>, ParseError> {
    let mut c = Cursor::new(body)?;
    // Find the root, skipping the `<xml>` wrapper and anything before.
    let root = loop {
        match c.bump() {
            Some(Tok::Open(n)) if n == "methodcall" || n == "methodresponse" => break n,
            Some(Tok::Open(n)) if n == "xml" => {}
            Some(t) => {
                let t = describe(&t);
                c.i -= 1;
                c.repair(format!("{t} before the message ignored"));
                c.i += 1;
            }
            None => return Err(ParseError::NoRoot("xml")),
        }
    };
    let msg = if root == "methodcall" {
        c.skip_text();
        let method = if c.is_open("methodname") {
            c.i += 1;
            let m = c.text_until_tag();
            match c.peek().cloned() {
                Some(Tok::Close(n)) if n == "methodname" => c.i += 1,
                Some(Tok::Open(n)) if n == "methodname" => {
                    c.repair("<methodName> closed by another <methodName>".into());
                    c.i += 1;
                }
                Some(t) => {
                    let t = describe(&t);
                    c.repair(format!("missing </methodName> before {t}"));
                }
                None => c.repair("missing </methodName>".into()),
            }
            m.trim().to_string()
        } else {
            return Err(ParseError::Bad { offset: c.at(), what: "<methodCall> without <methodName>".into() });
        };
        if method.is_empty() {
            return Err(ParseError::Bad { offset: c.at(), what: "empty <methodName>".into() });
        }
        c.skip_text();
        let params = if c.is_open("params") {
            c.i += 1;
            c.params()
        } else if c.is_open("param") {
            c.repair("<param> without <params>".into());
            c.params()
        } else {
            Vec::new()
        };
        c.skip_text();
        c.close("methodcall");
        Message::Call { method, params }
    } else {
        c.skip_text();
        if c.is_open("fault") {
            c.i += 1;
            c.skip_text();
            let v = c.value_or_bare();
            c.skip_text();
            c.close("fault");
            c.skip_text();
            c.close("methodresponse");
            let s = v.as_struct().cloned().unwrap_or_default();
            Message::Fault { code: s.int("faultCode").unwrap_or(0), message: s.str("faultString").unwrap_or_default() }
        } else {
            let params = if c.is_open("params") {
                c.i += 1;
                c.params()
            } else if c.is_open("param") {
                c.repair("<param> without <params>".into());
                c.params()
            } else {
                Vec::new()
            };
            c.skip_text();
            c.close("methodresponse");
            Message::Response { params }
        }
    };
    // Trailing junk: `</param></param>>`, `/methodResponse>`, `</xml>`.
    while let Some(t) = c.bump() {
        match t {
            Tok::Close(n) if n == "xml" => {}
            Tok::Text(t) if t.trim().is_empty() => {}
            t => {
                let t = describe(&t);
                c.i -= 1;
                c.repair(format!("{t} after the message ignored"));
                c.i += 1;
            }
        }
    }
    Ok(Parsed { value: msg, repairs: finish(c.repairs) })
}

/// Parses a lone value (`<value>…</value>` or a bare typed element).
pub fn parse_value(body: &[u8]) -> Result<Parsed<Value>, ParseError> {
    let mut c = Cursor::new(body)?;
    c.skip_text();
    if c.peek().is_none() {
        return Err(ParseError::NoRoot("value"));
    }
    let v = c.value_or_bare();
    Ok(Parsed { value: v, repairs: finish(c.repairs) })
}

/// The analytics stream's document (`<AnalyticsData>` with a source GUID,
/// a time and XML-RPC params).
#[derive(Clone, Debug, PartialEq)]
pub struct AnalyticsData {
    pub source_guid: String,
    pub time: String,
    pub params: Vec<Value>,
}

pub fn parse_analytics(body: &[u8]) -> Result<Parsed<AnalyticsData>, ParseError> {
    let mut c = Cursor::new(body)?;
    loop {
        match c.bump() {
            Some(Tok::Open(n)) if n == "analyticsdata" => break,
            Some(_) => {}
            None => return Err(ParseError::NoRoot("AnalyticsData")),
        }
    }
    let mut d = AnalyticsData { source_guid: String::new(), time: String::new(), params: Vec::new() };
    loop {
        c.skip_text();
        match c.bump() {
            Some(Tok::Open(n)) if n == "datasourceguid" || n == "datatime" => {
                let t = c.text_until_tag().trim().to_string();
                c.close(&n);
                if n == "datasourceguid" {
                    d.source_guid = t;
                } else {
                    d.time = t;
                }
            }
            Some(Tok::Open(n)) if n == "params" => d.params = c.params(),
            Some(Tok::Close(n)) if n == "analyticsdata" => break,
            Some(t) => {
                let t = describe(&t);
                c.i -= 1;
                c.repair(format!("{t} in <AnalyticsData> ignored"));
                c.i += 1;
            }
            None => {
                c.repair("missing </AnalyticsData> at the end".into());
                break;
            }
        }
    }
    Ok(Parsed { value: d, repairs: finish(c.repairs) })
}

// ---------------------------------------------------------------- writer

fn escape_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\r' => "&#13;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

pub fn write_value(out: &mut String, v: &Value) {
    out.push_str("<value>");
    match v {
        Value::Int(i) => {
            let _ = write!(out, "<int>{i}</int>");
        }
        Value::I4(i) => {
            let _ = write!(out, "<i4>{i}</i4>");
        }
        Value::UInt(u) => {
            let _ = write!(out, "<uint>{u}</uint>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", *b as u8);
        }
        Value::Str(s) => {
            out.push_str("<string>");
            escape_into(out, s);
            out.push_str("</string>");
        }
        Value::Double(d) => {
            // XML-RPC has no exponent form and no inf/nan.
            let d = if d.is_finite() { *d } else { 0.0 };
            let _ = write!(out, "<double>{d:?}</double>");
        }
        Value::DateTime(s) => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, s);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Base64(b) => {
            out.push_str("<base64>");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push_str("</base64>");
        }
        Value::Struct(s) => {
            out.push_str("<struct>");
            for (n, v) in &s.0 {
                out.push_str("<member><name>");
                escape_into(out, n);
                out.push_str("</name>");
                write_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
        Value::Array(a) => {
            out.push_str("<array><data>");
            for v in a {
                write_value(out, v);
            }
            out.push_str("</data></array>");
        }
        Value::Nil => out.push_str("<nil/>"),
    }
    out.push_str("</value>");
}

fn write_params(out: &mut String, params: &[Value]) {
    out.push_str("<params>");
    for p in params {
        out.push_str("<param>");
        write_value(out, p);
        out.push_str("</param>");
    }
    out.push_str("</params>");
}

/// Strict, well-formed XML-RPC.
pub fn write(msg: &Message) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\"?>");
    match msg {
        Message::Call { method, params } => {
            out.push_str("<methodCall><methodName>");
            escape_into(&mut out, method);
            out.push_str("</methodName>");
            write_params(&mut out, params);
            out.push_str("</methodCall>");
        }
        Message::Response { params } => {
            out.push_str("<methodResponse>");
            write_params(&mut out, params);
            out.push_str("</methodResponse>");
        }
        Message::Fault { code, message } => {
            out.push_str("<methodResponse><fault>");
            let code = i32::try_from(*code).unwrap_or(i32::MAX);
            let s = Struct::new().with("faultCode", code).with("faultString", message.as_str());
            write_value(&mut out, &Value::Struct(s));
            out.push_str("</fault></methodResponse>");
        }
    }
    out
}

pub fn write_analytics(d: &AnalyticsData) -> String {
    let mut out = String::from("<AnalyticsData><DataSourceGUID>");
    escape_into(&mut out, &d.source_guid);
    out.push_str("</DataSourceGUID><DataTime>");
    escape_into(&mut out, &d.time);
    out.push_str("</DataTime>");
    write_params(&mut out, &d.params);
    out.push_str("</AnalyticsData>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(m: &str, params: Vec<Value>) -> Message {
        Message::Call { method: m.into(), params }
    }

    #[test]
    fn round_trip_every_type() {
        let all = Value::Struct(
            Struct::new()
                .with("int", -5)
                .with("i4", Value::I4(7))
                .with("uint", 0x0100_0000u32)
                .with("bool", true)
                .with("str", "a <b> & \"c\"\r\n")
                .with("double", 1.5)
                .with("date", Value::DateTime("20261121T10:00:00".into()))
                .with("b64", Value::Base64(vec![0, 1, 2, 255]))
                .with("arr", vec![Value::Int(1), Value::Str(String::new()), Value::Nil])
                .with("empty", Struct::new()),
        );
        for msg in [
            call("cviPtz.cmd", vec![all.clone(), Value::Array(vec![])]),
            Message::Response { params: vec![all] },
            Message::Fault { code: 0x0100_0004, message: "no such method <x>".into() },
            call("system.listServices", vec![]),
        ] {
            let xml = write(&msg);
            let p = parse(xml.as_bytes()).unwrap();
            assert!(p.repairs.is_empty(), "{xml}: {:?}", p.repairs);
            assert_eq!(p.value, msg);
        }
    }

    #[test]
    fn well_formed_input_needs_no_repair() {
        let xml = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><array><data>\n<value><string>cvip</string></value>\n<value>bare</value>\n<value><string></string></value>\n</data></array></value>\n</param>\n</params>\n</methodResponse>\n";
        let p = parse(xml.as_bytes()).unwrap();
        assert!(p.repairs.is_empty(), "{:?}", p.repairs);
        assert_eq!(
            p.value,
            Message::Response { params: vec![Value::Array(vec!["cvip".into(), "bare".into(), "".into()])] }
        );
    }

    #[test]
    fn swapped_closes_and_mismatched_types() {
        let xml = "<methodResponse><params><param><value><array><data><value><struct><member><name>id</name><value><boolean>1</int></boolean></value></member>\n</value></struct></data></array></value></param></params></methodResponse>";
        let p = parse(xml.as_bytes()).unwrap();
        let Message::Response { params } = &p.value else { panic!() };
        let s = params[0].as_array().unwrap()[0].as_struct().unwrap();
        assert_eq!(s.get("id"), Some(&Value::Bool(true)));
        let text: Vec<String> = p.repairs.iter().map(|r| r.what.clone()).collect();
        assert!(text.iter().any(|r| r.contains("out of order")), "{text:?}");
        assert!(text.iter().any(|r| r.contains("stray </int>")), "{text:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse(b"hello").unwrap_err(), ParseError::NoRoot("xml"));
        assert!(matches!(parse(b"<methodCall><params/></methodCall>"), Err(ParseError::Bad { .. })));
        assert!(matches!(parse(&[0xff, 0xfe]), Err(ParseError::NotUtf8(0))));
        let _ = parse(b"<methodResponse><params><param><value><struct><member><name>");
    }
}
