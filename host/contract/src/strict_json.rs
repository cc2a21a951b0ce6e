//! JSON parsing that refuses duplicate object keys, which `serde_json::Value` silently merges.
//!
//! Manifests and request bodies are parsed here, so a document that says one thing twice is
//! refused with the JSON pointer of the repeated key instead of keeping whichever came last.

use std::cell::RefCell;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// The text is not JSON.
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// A key appears twice in one object; `pointer` is the JSON pointer of the second one.
    #[error("duplicate key `{key}` at `{pointer}`")]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// JSON pointer (RFC 6901) of the repeated key.
        pointer: String,
    },
}

/// Parses `text`, failing on malformed JSON or on a key repeated within one object.
pub fn parse(text: &str) -> Result<Value, StrictJsonError> {
    parse_slice(text.as_bytes())
}

/// Parses `bytes` as [`parse`] does.
pub fn parse_slice(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict {
        pointer: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some((key, pointer))) => Err(StrictJsonError::DuplicateKey { key, pointer }),
        (Ok(value), None) => Ok(value),
        (Err(error), None) => Err(StrictJsonError::Syntax(error)),
    }
}

/// A value at `pointer`; the first duplicate found is written to `duplicate`.
struct Strict<'a> {
    pointer: String,
    duplicate: &'a RefCell<Option<(String, String)>>,
}

impl Strict<'_> {
    fn child(&self, token: &str) -> Self {
        let escaped = token.replace('~', "~0").replace('/', "~1");
        Strict {
            pointer: format!("{}/{escaped}", self.pointer),
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
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
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(&items.len().to_string()))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(&key);
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some((key, child.pointer.clone()));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::{StrictJsonError, parse};

    #[test]
    fn duplicate_keys_are_refused_with_their_pointer() {
        let error = parse(r#"{"a": [0, {"b/c": 1, "b/c": 2}]}"#).unwrap_err();
        match &error {
            StrictJsonError::DuplicateKey { key, pointer } => {
                assert_eq!(key, "b/c");
                assert_eq!(pointer, "/a/1/b~1c");
            }
            other => panic!("expected a duplicate key, got {other}"),
        }
        assert!(error.to_string().contains("duplicate key `b/c`"), "{error}");
    }

    #[test]
    fn ordinary_json_parses_unchanged() {
        let value = parse(r#"{"a": [1, 2.5, "x", null, true]}"#).unwrap();
        assert_eq!(value, serde_json::json!({"a": [1, 2.5, "x", null, true]}));
    }

    #[test]
    fn trailing_text_is_a_syntax_error_with_its_position() {
        let error = parse("{} x").unwrap_err();
        let StrictJsonError::Syntax(syntax) = &error else {
            panic!("expected a syntax error, got {error}");
        };
        assert_eq!((syntax.line(), syntax.column()), (1, 4));
    }
}
