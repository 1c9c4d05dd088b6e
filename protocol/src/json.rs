//! JSON from clients, read strictly: an object with the same key twice is refused. serde_json
//! (and most parsers) keep the last value, others the first, so one header could be read as two
//! different payments by the filter, the verifier and the facilitator.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON, refusing any object that repeats a key (at any depth).
pub fn parse_unique_keys(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Unique.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A [`Value`] whose objects have distinct keys.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without repeated object keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Unique.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Unique)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Unique)?;
            if out.insert(key, value).is_some() {
                return Err(de::Error::custom("an object repeats a key"));
            }
        }
        Ok(Value::Object(out))
    }
}

/// The same value as `serde_json` reads it (numbers included), for inputs without repeats.
#[cfg(test)]
fn plain(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"value":"1","value":"1000"}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"[{"x":[{"k":0,"k":0}]}]"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            assert!(parse_unique_keys(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_json_reads_as_serde_json_reads_it() {
        for good in [
            r#"{"x402Version":2,"payload":{"a":[1,2.5,-3,true,null,"s"]},"b":{}}"#,
            "[]",
            "1e400",
            r#""\ud83d\ude00""#,
            r#"{"a":{"b":1},"b":{"a":1}}"#,
        ] {
            match parse_unique_keys(good.as_bytes()) {
                Ok(v) => assert_eq!(v, plain(good.as_bytes()), "{good}"),
                Err(e) => assert!(serde_json::from_str::<Value>(good).is_err(), "{good}: {e}"),
            }
        }
        assert!(parse_unique_keys(b"{} x").is_err());
    }
}
