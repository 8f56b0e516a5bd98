//! CVIP values on the command line: JSON in and out, `ID=VALUE`, names of
//! the seed's code tables.

use super::*;

/// A Value as JSON for `--json` and display.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Int(i) | Value::I4(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Bool(b) => json!(b),
        Value::Str(s) | Value::DateTime(s) => json!(s),
        Value::Double(d) => json!(d),
        Value::Base64(b) => json!({ "$base64_len": b.len() }),
        Value::Struct(s) => Json::Object(s.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Nil => Json::Null,
    }
}

/// JSON to a Value: integers are <int>, `{"$uint": n}` and friends pick
/// the other types.
pub fn from_json(j: &Json) -> anyhow::Result<Value> {
    Ok(match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(
                i32::try_from(i)
                    .map_err(|_| anyhow!("{i} does not fit an <int>; use {{\"$uint\": {i}}} or a string"))?,
            ),
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(from_json).collect::<anyhow::Result<_>>()?),
        Json::Object(o) if o.len() == 1 && o.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let (k, v) = o.iter().next().unwrap();
            match k.as_str() {
                "$uint" => Value::UInt(
                    v.as_u64()
                        .and_then(|u| u32::try_from(u).ok())
                        .ok_or_else(|| anyhow!("$uint needs 0–4294967295"))?,
                ),
                "$i4" => Value::I4(
                    v.as_i64()
                        .and_then(|u| i32::try_from(u).ok())
                        .ok_or_else(|| anyhow!("$i4 needs a 32-bit integer"))?,
                ),
                "$double" => Value::Double(v.as_f64().ok_or_else(|| anyhow!("$double needs a number"))?),
                "$datetime" => {
                    Value::DateTime(v.as_str().ok_or_else(|| anyhow!("$datetime needs a string"))?.to_string())
                }
                "$base64" => {
                    use base64_decode as b;
                    Value::Base64(b(v.as_str().ok_or_else(|| anyhow!("$base64 needs a string"))?)?)
                }
                other => bail!("unknown type tag {other:?} (use $uint, $i4, $double, $datetime or $base64)"),
            }
        }
        Json::Object(o) => {
            let mut s = Struct::new();
            for (k, v) in o {
                s.push(k, from_json(v)?);
            }
            Value::Struct(s)
        }
    })
}

pub(super) fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean.trim_end_matches('='))
        .map_err(|e| anyhow!("$base64: {e}"))
}

/// `ID=VALUE`: numbers become <int>, true/false <boolean>, the rest
/// <string> (the unit converts to the property's own type).
pub(super) fn kv(s: &str) -> anyhow::Result<(String, Value)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("{s:?}: expected ID=VALUE"))?;
    let v = if let Ok(i) = v.parse::<i32>() {
        Value::Int(i)
    } else if v == "true" || v == "false" {
        Value::Bool(v == "true")
    } else {
        Value::Str(v.to_string())
    };
    Ok((k.to_string(), v))
}

pub(super) fn props(list: &[String]) -> anyhow::Result<Struct> {
    let mut s = Struct::new();
    for p in list {
        let (k, v) = kv(p)?;
        s.push(&k, v);
    }
    Ok(s)
}

pub(super) fn entity_type(s: &str) -> anyhow::Result<EntityType> {
    EntityType::parse(&s.replace(['-', '_'], "")).ok_or_else(|| {
        anyhow!("{s:?}: expected camera, monitor, device, sequence, map, image, alarmmessage or a number")
    })
}

pub(super) fn profile_type(s: &str) -> anyhow::Result<ProfileType> {
    ProfileType::parse(&s.replace(['-', '_'], ""))
        .or_else(|| ProfileType::parse(s.trim_end_matches("profile")))
        .ok_or_else(|| anyhow!("{s:?}: expected serialport, schedule, videoencoder, audioencoder or 1–4"))
}

pub(super) fn privilege(s: &str) -> anyhow::Result<u32> {
    let mut m = 0;
    for p in s.split([',', '|']) {
        m |= api::Privilege::parse(p.trim()).ok_or_else(|| anyhow!("{p:?} is not a privilege"))?.code();
    }
    Ok(m)
}

pub(super) fn when(s: &str) -> anyhow::Result<String> {
    let t =
        ivr_sim::cvip::parse_time(s).ok_or_else(|| anyhow!("{s:?}: expected YYYYMMDDHHMMSS or YYYY-MM-DD HH:MM:SS"))?;
    Ok(ivr_sim::cvip::fmt_compact(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_json_values() {
        for text in ["aGVsbG8=", "aGVsbG8", "aGVs\nbG8="] {
            assert_eq!(from_json(&json!({"$base64": text})).unwrap(), Value::Base64(b"hello".to_vec()), "{text:?}");
        }
        assert!(from_json(&json!({"$base64": "a*b"})).unwrap_err().to_string().starts_with("$base64:"));
        assert_eq!(from_json(&json!({"$uint": 7})).unwrap(), Value::UInt(7));
        assert!(from_json(&json!(5_000_000_000i64)).is_err(), "too big for <int>");
    }
}
