//! XML-RPC values with the seed's extra types (`uint`), and field access
//! that survives the seed's spellings.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i32),
    I4(i32),
    UInt(u32),
    Bool(bool),
    Str(String),
    Double(f64),
    /// Kept as written (`20261121T10:00:00`, `2026-11-21T10:00:00Z`, …).
    DateTime(String),
    Base64(Vec<u8>),
    Struct(Struct),
    Array(Vec<Value>),
    Nil,
}

/// Members in the order they came; names compared with [`canon`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Struct(pub Vec<(String, Value)>);

impl Struct {
    pub fn new() -> Struct {
        Struct(Vec::new())
    }

    pub fn with(mut self, name: &str, v: impl Into<Value>) -> Struct {
        self.0.push((name.to_string(), v.into()));
        self
    }

    pub fn push(&mut self, name: &str, v: impl Into<Value>) {
        self.0.push((name.to_string(), v.into()));
    }

    /// The member called `name`, matched case-insensitively and through the
    /// seed's PDF mangling (`destlp` = `destIp`, `ld` = `Id`, Cyrillic `Т`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        let want = canon(name);
        self.0.iter().find(|(n, _)| canon(n) == want).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        let want = canon(name);
        self.0.iter_mut().find(|(n, _)| canon(n) == want).map(|(_, v)| v)
    }

    /// Sets or replaces a member.
    pub fn set(&mut self, name: &str, v: impl Into<Value>) {
        let v = v.into();
        match self.get_mut(name) {
            Some(slot) => *slot = v,
            None => self.0.push((name.to_string(), v)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let want = canon(name);
        let i = self.0.iter().position(|(n, _)| canon(n) == want)?;
        Some(self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.get(name).map(Value::to_text)
    }
}

/// The canonical form of a field name: lower case, Cyrillic look-alikes
/// folded to Latin, the PDF's `l` for `I` undone (`srclp`, `ld`,
/// `CameralD`), and the seed's misspellings (`persistant`, `EnittyTypeID`,
/// `SericeID`, `GroupDesc`) mapped to one name.
pub fn canon(name: &str) -> String {
    let mut s: String = name
        .trim()
        .chars()
        .map(|c| match c {
            'Т' | 'т' => 't',
            'у' | 'У' => 'y',
            'р' | 'Р' => 'p',
            'е' | 'Е' => 'e',
            'о' | 'О' => 'o',
            'а' | 'А' => 'a',
            'с' | 'С' => 'c',
            'х' | 'Х' => 'x',
            'к' | 'К' => 'k',
            'М' | 'м' => 'm',
            'Н' | 'н' => 'h',
            'В' | 'в' => 'b',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if s.contains("lp") {
        s = s.replace("lp", "ip");
    }
    if s == "ld" || s.ends_with("ld") && s.len() > 2 {
        s.truncate(s.len() - 2);
        s.push_str("id");
    }
    match s.as_str() {
        "persistant" => "persistent".into(),
        "enittytypeid" => "entitytypeid".into(),
        "sericeid" => "serviceid".into(),
        "groupdesc" => "groupdescription".into(),
        "functionssupport" => "functionsupport".into(),
        _ => s,
    }
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) | Value::I4(i) => Some(*i as i64),
            Value::UInt(u) => Some(*u as i64),
            Value::Bool(b) => Some(*b as i64),
            Value::Double(d) if d.fract() == 0.0 => Some(*d as i64),
            Value::Str(s) => parse_int_text(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            },
            v => v.as_i64().map(|i| i != 0),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_struct(&self) -> Option<&Struct> {
        match self {
            Value::Struct(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Text of a scalar (numbers in decimal); structs and arrays render as
    /// XML-RPC-ish JSON for messages.
    pub fn to_text(&self) -> String {
        match self {
            Value::Str(s) | Value::DateTime(s) => s.clone(),
            Value::Int(i) | Value::I4(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Bool(b) => (*b as u8).to_string(),
            Value::Double(d) => d.to_string(),
            other => other.to_string(),
        }
    }

    /// The XML-RPC type name, as in the tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::I4(_) => "i4",
            Value::UInt(_) => "uint",
            Value::Bool(_) => "boolean",
            Value::Str(_) => "string",
            Value::Double(_) => "double",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::Base64(_) => "base64",
            Value::Struct(_) => "struct",
            Value::Array(_) => "array",
            Value::Nil => "nil",
        }
    }
}

/// Decimal or `0x` hex, as the seed writes codes.
pub fn parse_int_text(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => t.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// JSON-like rendering for people and `--json`-less output.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) | Value::DateTime(s) => write!(f, "{s:?}"),
            Value::Base64(b) => write!(f, "<{} bytes>", b.len()),
            Value::Struct(s) => {
                f.write_str("{")?;
                for (i, (n, v)) in s.0.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n:?}: {v}")?;
                }
                f.write_str("}")
            }
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Nil => f.write_str("null"),
            v => f.write_str(&v.to_text()),
        }
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::UInt(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Double(v)
    }
}
impl From<Struct> for Value {
    fn from(v: Struct) -> Value {
        Value::Struct(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangled_names_match() {
        for (a, b) in [
            ("destlp", "destIp"),
            ("srclp", "srcIP"),
            ("ld", "Id"),
            ("Туре", "type"),
            ("CameralD", "CameraID"),
            ("persistant", "Persistent"),
            ("EnittyTypeID", "EntityTypeID"),
            ("networklpAddress", "networkIpAddress"),
            ("GroupDesc", "GroupDescription"),
        ] {
            assert_eq!(canon(a), canon(b), "{a} vs {b}");
        }
        assert_ne!(canon("Id"), canon("GUID"));
    }

    #[test]
    fn struct_get_is_forgiving() {
        let s = Struct::new().with("destlp", "10.0.0.1").with("Туре", 4);
        assert_eq!(s.str("destIp").as_deref(), Some("10.0.0.1"));
        assert_eq!(s.int("type"), Some(4));
        assert_eq!(parse_int_text("0x01000001"), Some(0x0100_0001));
    }
}
