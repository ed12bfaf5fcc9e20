//! Strict JSON: the JSON documents Tally reads from outside (the agent's event bodies,
//! closed statements) go through [`parse`], which refuses a repeated object key.
//!
//! Why: `{"metric": "api.render", "metric": "api.convert"}` is valid to serde_json (the
//! last key wins), but other parsers keep the first, so a proxy or audit log in front of
//! Tally could read a different event than the one counted. RFC 8259 leaves duplicate names
//! undefined; a billing input treats them as malformed.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not acceptable JSON.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

impl JsonError {
    /// The readable message (e.g. `duplicate key "metric" at line 1 column 40`).
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Parses one JSON document, refusing repeated object keys (at any depth) and trailing
/// data.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictValue
        .deserialize(&mut de)
        .map_err(|e| JsonError(e.to_string()))?;
    de.end().map_err(|e| JsonError(e.to_string()))?;
    Ok(v)
}

/// Deserializes a `serde_json::Value` like serde_json does, except that an object with a
/// repeated key is an error naming the key.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
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
        d.deserialize_any(StrictValue)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused_at_any_depth_and_named() {
        let e = parse(br#"{"metric": "api.render", "metric": "api.convert"}"#).unwrap_err();
        assert!(e.message().starts_with(r#"duplicate key "metric""#), "{e}");
        let e = parse(br#"{"events": [{"quantity": 1, "quantity": 2}]}"#).unwrap_err();
        assert!(e.message().contains(r#"duplicate key "quantity""#), "{e}");
        assert!(parse(br#"{"a": {"b": 1}, "c": {"b": 2}}"#).is_ok());
    }

    #[test]
    fn values_match_serde_json() {
        let text =
            br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "big": 18446744073709551615}"#;
        let strict = parse(text).unwrap();
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn trailing_data_and_syntax_errors_are_refused() {
        assert!(parse(br#"{"a": 1} {"b": 2}"#).is_err());
        assert!(parse(br#"{"a": }"#).is_err());
        assert!(parse(b"").is_err());
    }
}
