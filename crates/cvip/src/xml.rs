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
use std::collections::VecDeque;
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

/// A tag name, lower-cased: the XML-RPC names are static (no allocation
/// per tag), anything else is owned.
type Name = std::borrow::Cow<'static, str>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open(Name),
    Close(Name),
    Text(String),
}

const KNOWN: &[&str] = &[
    "value",
    "member",
    "name",
    "string",
    "struct",
    "int",
    "param",
    "params",
    "array",
    "data",
    "i4",
    "uint",
    "boolean",
    "double",
    "datetime.iso8601",
    "base64",
    "nil",
    "i8",
    "methodcall",
    "methodresponse",
    "methodname",
    "fault",
    "xml",
    "analyticsdata",
    "datasourceguid",
    "datatime",
];

/// Pulls tokens from quick-xml one at a time (nothing is materialised:
/// the parser looks at most two tokens ahead), applying the token-level
/// repairs on the way: tags cut by a line break are split, closing tags
/// that arrive swapped (`</value></struct>` for `</struct></value>`) are put
/// back in order.
struct Lexer<'a> {
    r: quick_xml::Reader<&'a [u8]>,
    raw: VecDeque<(Tok, usize)>,
    text: String,
    text_at: usize,
    /// The last raw token opened a string or value (whitespace is content).
    in_string: bool,
    eof: bool,
    /// Open elements, for the transposition repair.
    stack: Vec<Name>,
}

struct Cursor<'a> {
    lex: Lexer<'a>,
    buf: VecDeque<(Tok, usize)>,
    repairs: Vec<Repair>,
    end: usize,
    /// A transposed `</value></struct>` already closed the value.
    value_closed: bool,
    last_at: usize,
}

fn lname(raw: &[u8]) -> Name {
    let t = raw.trim_ascii();
    if let Some(k) = KNOWN.iter().find(|k| k.len() == t.len() && k.as_bytes().eq_ignore_ascii_case(t)) {
        return Name::Borrowed(k);
    }
    Name::Owned(String::from_utf8_lossy(t).to_ascii_lowercase())
}

fn utf8(b: &[u8]) -> std::borrow::Cow<'_, str> {
    // The body was checked as UTF-8 as a whole; a piece of it split at a
    // markup byte is UTF-8 too, so this never replaces anything.
    String::from_utf8_lossy(b)
}

impl<'a> Lexer<'a> {
    fn new(body: &'a [u8]) -> Lexer<'a> {
        let mut r = quick_xml::Reader::from_reader(body);
        let cfg = r.config_mut();
        cfg.check_end_names = false;
        cfg.allow_unmatched_ends = true;
        cfg.allow_dangling_amp = true;
        cfg.expand_empty_elements = true;
        cfg.trim_text(false);
        Lexer {
            r,
            raw: VecDeque::new(),
            text: String::new(),
            text_at: 0,
            in_string: false,
            eof: false,
            stack: Vec::new(),
        }
    }

    /// Whitespace between elements is layout, except as the content of a
    /// string or value.
    fn flush(&mut self) {
        if self.text.is_empty() {
            return;
        }
        if self.in_string || !self.text.trim().is_empty() {
            self.raw.push_back((Tok::Text(std::mem::take(&mut self.text)), self.text_at));
        } else {
            self.text.clear();
        }
    }

    fn push_tag(&mut self, name: Name, at: usize, open: bool, repairs: &mut Vec<Repair>) {
        self.flush();
        if !name.contains('<') {
            self.in_string = open && (name == "string" || name == "value");
            self.raw.push_back((if open { Tok::Open(name) } else { Tok::Close(name) }, at));
            return;
        }
        // A tag name holding `<` was cut by a line break before its `>`
        // (`</value></mem` + newline + `<member>`): the part before is a
        // truncated tag, the part after a new one.
        let mut parts = name.split('<');
        let first = parts.next().unwrap_or("").trim().to_string();
        let slash = if open { "" } else { "/" };
        push_repair(repairs, at, format!("tag <{slash}{first}> has no '>': read up to the next '<'"));
        self.raw.push_back((if open { Tok::Open(first.into()) } else { Tok::Close(first.into()) }, at));
        for part in parts {
            let p = part.trim();
            if let Some(c) = p.strip_prefix('/') {
                self.raw.push_back((Tok::Close(c.trim().to_string().into()), at));
            } else if !p.is_empty() {
                self.raw.push_back((Tok::Open(p.to_string().into()), at));
            }
        }
        self.in_string = false;
    }

    /// Reads events until at least one more raw token exists (false at the
    /// end of the body).
    fn read(&mut self, repairs: &mut Vec<Repair>) -> bool {
        let before = self.raw.len();
        while self.raw.len() == before && !self.eof {
            let at = self.r.buffer_position() as usize;
            let ev = match self.r.read_event() {
                Ok(ev) => ev,
                Err(e) => {
                    push_repair(repairs, at, format!("ignored the rest of the body: {e}"));
                    self.flush();
                    self.eof = true;
                    break;
                }
            };
            match ev {
                Event::Eof => {
                    self.flush();
                    self.eof = true;
                }
                Event::Start(s) => self.push_tag(lname(s.name().as_ref()), at, true, repairs),
                Event::End(e) => self.push_tag(lname(e.name().as_ref()), at, false, repairs),
                Event::Text(t) => {
                    if self.text.is_empty() {
                        self.text_at = at;
                    }
                    self.text.push_str(&utf8(&t));
                }
                Event::CData(c) => {
                    if self.text.is_empty() {
                        self.text_at = at;
                    }
                    self.text.push_str(&utf8(&c));
                }
                Event::GeneralRef(g) => {
                    if self.text.is_empty() {
                        self.text_at = at;
                    }
                    match g.resolve_char_ref() {
                        Ok(Some(c)) => self.text.push(c),
                        _ => {
                            let name = utf8(&g).into_owned();
                            match quick_xml::escape::resolve_predefined_entity(&name) {
                                Some(s) => self.text.push_str(s),
                                None => {
                                    push_repair(repairs, at, format!("unknown entity &{name}; kept as text"));
                                    let _ = write!(self.text, "&{name};");
                                }
                            }
                        }
                    }
                }
                Event::Empty(_) | Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
        }
        self.raw.len() > before
    }

    fn next(&mut self, repairs: &mut Vec<Repair>) -> Option<(Tok, usize)> {
        if self.raw.is_empty() && !self.read(repairs) {
            return None;
        }
        let (tok, at) = self.raw.pop_front()?;
        match &tok {
            Tok::Open(n) => self.stack.push(n.clone()),
            Tok::Close(a) => {
                let n = self.stack.len();
                if n >= 2 && self.stack[n - 1] != *a && self.stack[n - 2] == *a {
                    if self.raw.is_empty() {
                        self.read(repairs);
                    }
                    if let Some((Tok::Close(b), _)) = self.raw.front() {
                        if *b == self.stack[n - 1] {
                            let what = format!("closing tags out of order: </{a}></{b}> read as </{b}></{a}>");
                            push_repair(repairs, at, what);
                            let (b, bat) = self.raw.pop_front().unwrap();
                            self.raw.push_front((tok, bat));
                            self.stack.pop();
                            return Some((b, at));
                        }
                    }
                }
                if let Some(p) = self.stack.iter().rposition(|s| s == a) {
                    self.stack.truncate(p);
                }
            }
            Tok::Text(_) => {}
        }
        Some((tok, at))
    }
}

fn is_scalar(n: &str) -> bool {
    SCALARS.contains(&n)
}

const SCALARS: &[&str] =
    &["int", "i4", "i8", "uint", "boolean", "string", "double", "datetime.iso8601", "base64", "nil"];

impl<'a> Cursor<'a> {
    fn new(body: &'a [u8]) -> Result<Cursor<'a>, ParseError> {
        if let Err(e) = std::str::from_utf8(body) {
            return Err(ParseError::NotUtf8(e.valid_up_to()));
        }
        Ok(Cursor {
            lex: Lexer::new(body),
            buf: VecDeque::new(),
            repairs: Vec::new(),
            end: body.len(),
            value_closed: false,
            last_at: 0,
        })
    }

    fn fill(&mut self, k: usize) {
        while self.buf.len() < k {
            match self.lex.next(&mut self.repairs) {
                Some(t) => self.buf.push_back(t),
                None => break,
            }
        }
    }

    fn peek(&mut self) -> Option<&Tok> {
        self.fill(1);
        self.buf.front().map(|t| &t.0)
    }

    fn peek_at(&mut self, k: usize) -> Option<&Tok> {
        self.fill(k + 1);
        self.buf.get(k).map(|t| &t.0)
    }

    fn at(&mut self) -> usize {
        self.fill(1);
        self.buf.front().map(|t| t.1).unwrap_or(self.end)
    }

    fn repair(&mut self, what: String) {
        let offset = self.at();
        push_repair(&mut self.repairs, offset, what);
    }

    fn advance(&mut self) {
        self.fill(1);
        self.buf.pop_front();
    }

    fn bump(&mut self) -> Option<Tok> {
        self.fill(1);
        let (t, at) = self.buf.pop_front()?;
        self.last_at = at;
        Some(t)
    }

    /// A repair at the token `bump` just took.
    fn repair_last(&mut self, what: String) {
        push_repair(&mut self.repairs, self.last_at, what);
    }

    fn is_open(&mut self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Open(n)) if n == name)
    }

    fn is_close(&mut self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Close(n)) if n == name)
    }

    /// Consumes `</name>`; a truncated `</nam` counts (with a repair); if
    /// something else comes, the close is taken as missing.
    fn close(&mut self, name: &str) {
        match self.peek() {
            Some(Tok::Close(n)) if n == name => {
                self.advance();
            }
            Some(Tok::Close(n)) if !n.is_empty() && name.starts_with(&**n) => {
                let n = n.clone();
                self.repair(format!("</{n}> read as </{name}>"));
                self.advance();
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
            self.advance();
        }
    }

    fn text_until_tag(&mut self) -> String {
        let mut s = String::new();
        loop {
            self.fill(1);
            match self.buf.front_mut() {
                Some((Tok::Text(t), _)) => {
                    if s.is_empty() {
                        s = std::mem::take(t);
                    } else {
                        s.push_str(t);
                    }
                    self.buf.pop_front();
                }
                _ => return s,
            }
        }
    }

    fn params(&mut self) -> Vec<Value> {
        // positioned after <params>
        let mut out = Vec::new();
        loop {
            self.skip_text();
            match self.peek() {
                Some(Tok::Open(n)) if n == "param" => {
                    self.advance();
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
                Some(Tok::Open(n)) if n == "value" || is_scalar(n) || n == "struct" || n == "array" => {
                    self.repair("value outside a <param>".into());
                    out.push(self.value_or_bare());
                }
                Some(Tok::Close(n)) if n == "params" => {
                    self.advance();
                    return out;
                }
                Some(Tok::Close(n)) if n == "param" => {
                    self.repair("stray </param> ignored".into());
                    self.advance();
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
                self.advance();
                self.value_body()
            }
            Some(Tok::Open(n)) => {
                let n = n.clone();
                self.repair(format!("<{n}> without <value> around it"));
                self.advance();
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
                self.advance();
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
                        self.advance();
                    }
                    Some(Tok::Close(n)) => {
                        // `<boolean>1</int></boolean>`, `<name>x</string>`
                        if matches!(self.peek_at(1), Some(Tok::Close(m)) if m == ty) {
                            self.repair(format!("stray </{n}> inside <{ty}> ignored"));
                            self.advance();
                            self.advance();
                        } else if n != "value" {
                            self.repair(format!("<{ty}> closed by </{n}>"));
                            self.advance();
                        } else {
                            self.repair(format!("missing </{ty}>"));
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
                    self.advance();
                    self.member(&mut s);
                }
                Some(Tok::Open(n)) if n == "name" => {
                    self.repair("<name> without <member>".into());
                    self.member(&mut s);
                }
                Some(Tok::Close(n)) if n == "struct" => {
                    self.advance();
                    break;
                }
                Some(Tok::Close(n)) if n == "member" => {
                    self.repair("stray </member> ignored".into());
                    self.advance();
                }
                Some(Tok::Close(n))
                    if n == "value" && matches!(self.peek_at(1), Some(Tok::Close(m)) if m == "struct") =>
                {
                    self.repair("closing tags out of order: </value></struct> read as </struct></value>".into());
                    self.advance();
                    self.advance();
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
            self.advance();
            let n = self.text_until_tag();
            match self.peek().cloned() {
                Some(Tok::Close(c)) if c == "name" => self.advance(),
                Some(Tok::Close(c)) => {
                    self.repair(format!("<name> closed by </{c}>"));
                    self.advance();
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
            self.advance();
            self.value_body()
        } else {
            match self.peek() {
                Some(Tok::Open(t)) if is_scalar(t) || t == "struct" || t == "array" => self.value_or_bare(),
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
            self.advance();
        } else if matches!(self.peek(), Some(Tok::Close(n)) if "member".starts_with(&**n) && !n.is_empty()) {
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
            Some(Tok::Open(n)) if n == "data" => self.advance(),
            Some(Tok::Close(n)) if n == "data" => {
                self.repair("</data> right after <array> read as <data>".into());
                self.advance();
            }
            _ => self.repair("<array> without <data>".into()),
        }
        loop {
            self.skip_text();
            match self.peek().cloned() {
                Some(Tok::Open(n)) if n == "value" => {
                    self.advance();
                    out.push(self.value_body());
                }
                Some(Tok::Open(n)) if is_scalar(&n) || n == "struct" || n == "array" => {
                    out.push(self.value_or_bare());
                }
                Some(Tok::Close(n)) if n == "data" => {
                    self.advance();
                    self.skip_text();
                    self.close("array");
                    break;
                }
                Some(Tok::Close(n)) if n == "array" => {
                    self.repair("missing </data> before </array>".into());
                    self.advance();
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
    // Well-formed XML-RPC (what ivr and most devices send) takes the strict
    // single pass; anything it does not expect goes to the tolerant parser
    // from the start.
    if let Some(m) = strict::message(body) {
        return Ok(Parsed { value: m, repairs: Vec::new() });
    }
    parse_tolerant(body)
}

/// The strict pass alone: `None` unless `body` is well-formed XML-RPC.
pub fn parse_strict(body: &[u8]) -> Option<Message> {
    strict::message(body)
}

/// The tolerant parser alone (the fallback of [`parse`]).
pub fn parse_tolerant(body: &[u8]) -> Result<Parsed<Message>, ParseError> {
    let mut c = Cursor::new(body)?;
    // Find the root, skipping the `<xml>` wrapper and anything before.
    let root = loop {
        match c.bump() {
            Some(Tok::Open(n)) if n == "methodcall" || n == "methodresponse" => break n,
            Some(Tok::Open(n)) if n == "xml" => {}
            Some(t) => {
                let t = describe(&t);
                c.repair_last(format!("{t} before the message ignored"));
            }
            None => return Err(ParseError::NoRoot("xml")),
        }
    };
    let msg = if root == "methodcall" {
        c.skip_text();
        let method = if c.is_open("methodname") {
            c.advance();
            let m = c.text_until_tag();
            match c.peek().cloned() {
                Some(Tok::Close(n)) if n == "methodname" => c.advance(),
                Some(Tok::Open(n)) if n == "methodname" => {
                    c.repair("<methodName> closed by another <methodName>".into());
                    c.advance();
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
            c.advance();
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
            c.advance();
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
                c.advance();
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
                c.repair_last(format!("{t} after the message ignored"));
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
                c.repair_last(format!("{t} in <AnalyticsData> ignored"));
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
            // XML-RPC has no exponent form (Display never writes one) and no
            // inf/nan.
            let d = if d.is_finite() { *d } else { 0.0 };
            let _ = write!(out, "<double>{d}</double>");
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
    fn strict_and_tolerant_agree_on_well_formed_input() {
        let samples = [
            "<?xml version='1.0'?>\n<methodCall>\n<methodName>system.describe</methodName>\n<params>\n</params>\n</methodCall>\n",
            "<methodCall><methodName>a.b</methodName><params/></methodCall>",
            "<methodResponse><params><param><value>bare &amp; text</value></param></params></methodResponse>",
            "<methodResponse><params><param><value><string> </string></value></param><param><value><nil/></value></param></params></methodResponse>",
            "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member><member><name>faultString</name><value><string>x&#13;</string></value></member></struct></value></fault></methodResponse>",
        ];
        for x in samples {
            let strict = parse_strict(x.as_bytes()).unwrap_or_else(|| panic!("strict refused {x}"));
            let t = parse_tolerant(x.as_bytes()).unwrap();
            assert!(t.repairs.is_empty(), "{x}: {:?}", t.repairs);
            assert_eq!(strict, t.value, "{x}");
        }
        // What the strict pass refuses, the tolerant one repairs.
        let bad = "<methodCall><methodName>a</methodName><params><param><value><boolean>1</int></boolean></value></param></params></methodCall>";
        assert!(parse_strict(bad.as_bytes()).is_none());
        assert!(!parse(bad.as_bytes()).unwrap().repairs.is_empty());
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::Int),
            any::<i32>().prop_map(Value::I4),
            any::<u32>().prop_map(Value::UInt),
            any::<bool>().prop_map(Value::Bool),
            "[ -~é<>&]{0,12}".prop_map(Value::Str),
            (-1e9f64..1e9).prop_map(Value::Double),
            "[0-9T:]{0,17}".prop_map(Value::DateTime),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Base64),
            Just(Value::Nil),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9]{0,6}", inner), 0..4).prop_map(|m| {
                    let mut s = Struct::new();
                    for (k, v) in m {
                        if s.get(&k).is_none() && !s.0.iter().any(|(n, _)| *n == k) {
                            s.0.push((k, v));
                        }
                    }
                    Value::Struct(s)
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn written_values_read_back_by_both_parsers(v in arb_value(), method in "[a-zA-Z][a-zA-Z0-9.]{0,20}") {
            for msg in [Message::Call { method: method.clone(), params: vec![v.clone()] }, Message::Response { params: vec![v.clone()] }] {
                let xml = write(&msg);
                let strict = parse_strict(xml.as_bytes());
                proptest::prop_assert_eq!(strict.as_ref(), Some(&msg));
                let t = parse_tolerant(xml.as_bytes()).unwrap();
                proptest::prop_assert!(t.repairs.is_empty(), "{:?}", t.repairs);
                proptest::prop_assert_eq!(&t.value, &msg);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse(&b);
            let _ = parse_tolerant(&b);
            let _ = parse_analytics(&b);
        }

        #[test]
        fn mangled_xml_never_panics(cut in 0usize..2000, junk in "[<>/a-z ]{0,6}") {
            let msg = Message::Response { params: vec![Value::Array(vec![Value::Struct(Struct::new().with("a", 1).with("b", "x"))])] };
            let mut xml = write(&msg);
            let at = cut % (xml.len() + 1);
            let at = (0..=at).rev().find(|i| xml.is_char_boundary(*i)).unwrap_or(0);
            xml.insert_str(at, &junk);
            let _ = parse(xml.as_bytes());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse(b"hello").unwrap_err(), ParseError::NoRoot("xml"));
        assert!(matches!(parse(b"<methodCall><params/></methodCall>"), Err(ParseError::Bad { .. })));
        assert!(matches!(parse(&[0xff, 0xfe]), Err(ParseError::NotUtf8(0))));
        let _ = parse(b"<methodResponse><params><param><value><struct><member><name>");
    }
}

/// The strict single pass over well-formed XML-RPC: no token buffer, no
/// repairs; `None` as soon as anything is unexpected.
mod strict {
    use super::Message;
    use crate::value::{parse_int_text, Struct, Value};
    use base64::Engine as _;
    use quick_xml::events::Event;
    use quick_xml::Reader;

    enum Ev<'a> {
        Start(&'a [u8]),
        End(&'a [u8]),
        Empty(&'a [u8]),
        Eof,
    }

    struct P<'a> {
        r: Reader<&'a [u8]>,
        body: &'a [u8],
        /// The body, checked as UTF-8 once.
        text: &'a str,
    }

    /// Tag names are short: one inline pass beats a memcmp call.
    #[inline]
    fn is(a: &[u8], b: &str) -> bool {
        a.len() == b.len() && a.iter().zip(b.bytes()).all(|(x, y)| *x == y || x.eq_ignore_ascii_case(&y))
    }

    impl<'a> P<'a> {
        /// A piece of the body (quick-xml hands out sub-slices of its
        /// input) as text, without checking UTF-8 again; None if it is not
        /// a sub-slice on character boundaries.
        fn piece(&self, b: &[u8]) -> Option<&'a str> {
            let off = (b.as_ptr() as usize).checked_sub(self.body.as_ptr() as usize)?;
            self.text.get(off..off.checked_add(b.len())?)
        }

        /// The next tag, skipping layout whitespace, the declaration and
        /// comments; text anywhere else is unexpected.
        fn tag(&mut self) -> Option<Ev<'a>> {
            loop {
                let start = self.r.buffer_position() as usize;
                match self.r.read_event().ok()? {
                    Event::Start(s) => {
                        let n = s.name().as_ref().len();
                        return Some(Ev::Start(&self.body[start + 1..start + 1 + n]));
                    }
                    Event::End(e) => {
                        let n = e.name().as_ref().len();
                        return Some(Ev::End(&self.body[start + 2..start + 2 + n]));
                    }
                    Event::Empty(e) => {
                        let n = e.name().as_ref().len();
                        return Some(Ev::Empty(&self.body[start + 1..start + 1 + n]));
                    }
                    Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
                    Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                    Event::Eof => return Some(Ev::Eof),
                    _ => return None,
                }
            }
        }

        fn expect_start(&mut self, name: &str) -> Option<()> {
            match self.tag()? {
                Ev::Start(n) if is(n, name) => Some(()),
                _ => None,
            }
        }

        fn expect_end(&mut self, name: &str) -> Option<()> {
            match self.tag()? {
                Ev::End(n) if is(n, name) => Some(()),
                _ => None,
            }
        }

        /// Character data up to the end tag `end`.
        fn text(&mut self, end: &str) -> Option<String> {
            let mut s = String::new();
            loop {
                match self.r.read_event().ok()? {
                    Event::Text(t) if s.is_empty() => s = self.piece(&t)?.to_owned(),
                    Event::Text(t) => s.push_str(self.piece(&t)?),
                    Event::CData(c) => s.push_str(self.piece(&c)?),
                    Event::GeneralRef(g) => match g.resolve_char_ref().ok()? {
                        Some(c) => s.push(c),
                        None => {
                            s.push_str(quick_xml::escape::resolve_predefined_entity(std::str::from_utf8(&g).ok()?)?)
                        }
                    },
                    Event::End(e) if is(e.name().as_ref(), end) => return Some(s),
                    _ => return None,
                }
            }
        }

        /// After `<value>`: the value and `</value>`.
        fn value(&mut self) -> Option<Value> {
            let mut bare = String::new();
            loop {
                match self.r.read_event().ok()? {
                    Event::Text(t) => bare.push_str(self.piece(&t)?),
                    Event::GeneralRef(g) => match g.resolve_char_ref().ok()? {
                        Some(c) => bare.push(c),
                        None => {
                            bare.push_str(quick_xml::escape::resolve_predefined_entity(std::str::from_utf8(&g).ok()?)?)
                        }
                    },
                    Event::CData(_) => return None,
                    Event::End(e) if is(e.name().as_ref(), "value") => return Some(Value::Str(bare)),
                    Event::Start(s) if bare.trim().is_empty() => {
                        let name = s.name();
                        let ty = name.as_ref();
                        let v = if is(ty, "struct") {
                            self.struct_body()?
                        } else if is(ty, "array") {
                            self.array_body()?
                        } else {
                            // The canonical spelling closes it too (`is`
                            // ignores case); unknown types fall back.
                            let ty = SCALAR_TAGS.iter().find(|t| is(ty, t))?;
                            let text = self.text(ty)?;
                            scalar(ty, text)?
                        };
                        self.expect_end("value")?;
                        return Some(v);
                    }
                    Event::Empty(s) if bare.trim().is_empty() && is(s.name().as_ref(), "nil") => {
                        self.expect_end("value")?;
                        return Some(Value::Nil);
                    }
                    _ => return None,
                }
            }
        }

        fn struct_body(&mut self) -> Option<Value> {
            let mut s = Struct(Vec::with_capacity(8));
            loop {
                match self.tag()? {
                    Ev::End(n) if is(n, "struct") => return Some(Value::Struct(s)),
                    Ev::Start(n) if is(n, "member") => {
                        self.expect_start("name")?;
                        let mut name = self.text("name")?;
                        if name.starts_with(|c: char| c.is_whitespace()) || name.ends_with(|c: char| c.is_whitespace())
                        {
                            name = name.trim().to_string();
                        }
                        // A repeated member is a repair note: the tolerant
                        // parser reports it.
                        if s.0.iter().any(|(n, _)| *n == name) {
                            return None;
                        }
                        self.expect_start("value")?;
                        let v = self.value()?;
                        self.expect_end("member")?;
                        s.0.push((name, v));
                    }
                    _ => return None,
                }
            }
        }

        fn array_body(&mut self) -> Option<Value> {
            self.expect_start("data")?;
            let mut a = Vec::new();
            loop {
                match self.tag()? {
                    Ev::End(n) if is(n, "data") => break,
                    Ev::Start(n) if is(n, "value") => a.push(self.value()?),
                    _ => return None,
                }
            }
            self.expect_end("array")?;
            Some(Value::Array(a))
        }

        fn params(&mut self) -> Option<Vec<Value>> {
            let mut out = Vec::new();
            loop {
                match self.tag()? {
                    Ev::End(n) if is(n, "params") => return Some(out),
                    Ev::Start(n) if is(n, "param") => {
                        self.expect_start("value")?;
                        out.push(self.value()?);
                        self.expect_end("param")?;
                    }
                    _ => return None,
                }
            }
        }
    }

    const SCALAR_TAGS: &[&str] = &["string", "int", "i4", "uint", "boolean", "double", "dateTime.iso8601", "base64"];

    fn scalar(ty: &str, text: String) -> Option<Value> {
        if ty == "string" {
            return Some(Value::Str(text));
        }
        let t = text.trim();
        Some(match ty {
            "int" => Value::Int(i32::try_from(parse_int_text(t)?).ok()?),
            "i4" => Value::I4(i32::try_from(parse_int_text(t)?).ok()?),
            "uint" => Value::UInt(u32::try_from(parse_int_text(t)?).ok()?),
            "boolean" => match t {
                "1" | "true" => Value::Bool(true),
                "0" | "false" => Value::Bool(false),
                _ => return None,
            },
            "double" => Value::Double(t.parse().ok()?),
            "dateTime.iso8601" => Value::DateTime(t.to_string()),
            "base64" => {
                let clean: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                Value::Base64(base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()).ok()?)
            }
            _ => return None,
        })
    }

    pub fn message(body: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(body).ok()?;
        let mut p = P { r: Reader::from_reader(body), body, text };
        let cfg = p.r.config_mut();
        cfg.expand_empty_elements = false;
        // This pass checks every end tag itself.
        cfg.check_end_names = false;
        cfg.trim_markup_names_in_closing_tags = false;
        let msg = match p.tag()? {
            Ev::Start(n) if is(n, "methodCall") => {
                p.expect_start("methodName")?;
                let method = p.text("methodName")?.trim().to_string();
                if method.is_empty() {
                    return None;
                }
                let params = match p.tag()? {
                    Ev::Start(n) if is(n, "params") => {
                        let v = p.params()?;
                        p.expect_end("methodCall")?;
                        v
                    }
                    Ev::Empty(n) if is(n, "params") => {
                        p.expect_end("methodCall")?;
                        Vec::new()
                    }
                    Ev::End(n) if is(n, "methodCall") => Vec::new(),
                    _ => return None,
                };
                Message::Call { method, params }
            }
            Ev::Start(n) if is(n, "methodResponse") => match p.tag()? {
                Ev::Start(n) if is(n, "params") => {
                    let v = p.params()?;
                    p.expect_end("methodResponse")?;
                    Message::Response { params: v }
                }
                Ev::Start(n) if is(n, "fault") => {
                    p.expect_start("value")?;
                    let v = p.value()?;
                    p.expect_end("fault")?;
                    p.expect_end("methodResponse")?;
                    let s = v.as_struct()?;
                    Message::Fault { code: s.int("faultCode")?, message: s.str("faultString")? }
                }
                Ev::Empty(n) if is(n, "params") => {
                    p.expect_end("methodResponse")?;
                    Message::Response { params: Vec::new() }
                }
                Ev::End(n) if is(n, "methodResponse") => Message::Response { params: Vec::new() },
                _ => return None,
            },
            _ => return None,
        };
        match p.tag()? {
            Ev::Eof => Some(msg),
            _ => None,
        }
    }
}
