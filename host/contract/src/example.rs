//! Example payloads: the smallest value a schema accepts, for scaffolds and docs.
//!
//! The example is built from the schema's shape (`const`, `enum`, `default`, `type`, required
//! properties, `minItems`, `minLength`, bounds, well-known formats) and then validated; a schema
//! whose constraints the builder cannot meet (a `pattern`, say) has no example.

use serde_json::{Map, Number, Value, json};

use crate::PayloadSchema;

/// How deep `$ref`s and nesting may go before the builder gives up (recursive schemas).
const MAX_DEPTH: usize = 32;

impl PayloadSchema {
    /// The smallest value this schema accepts, or `None` when the builder cannot make one
    /// that validates.
    pub fn example(&self) -> Option<Value> {
        let value = build(self.document(), self.document(), 0)?;
        self.validate(&value).ok().map(|()| value)
    }
}

fn build(schema: &Value, root: &Value, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let object = match schema {
        Value::Bool(true) => return Some(Value::Null),
        Value::Object(object) => object,
        _ => return None,
    };
    if let Some(target) = object.get("$ref").and_then(Value::as_str) {
        let pointer = target.strip_prefix('#')?;
        return build(root.pointer(pointer)?, root, depth + 1);
    }
    if let Some(value) = object.get("const").or_else(|| object.get("default")) {
        return Some(value.clone());
    }
    if let Some(first) = object
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
    {
        return Some(first.clone());
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(choices) = object.get(key).and_then(Value::as_array) {
            return choices
                .iter()
                .find_map(|choice| build(choice, root, depth + 1));
        }
    }
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("null"),
        _ if object.contains_key("properties") => "object",
        _ => "null",
    };
    match kind {
        "object" => {
            let properties = object.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for name in required(object) {
                let property = properties
                    .and_then(|p| p.get(name))
                    .unwrap_or(&Value::Bool(true));
                out.insert(name.to_owned(), build(property, root, depth + 1)?);
            }
            Some(Value::Object(out))
        }
        "array" => {
            let count = bound(object, "minItems").unwrap_or(0.0) as usize;
            let items = object.get("items").unwrap_or(&Value::Bool(true));
            let item = if count > 0 {
                build(items, root, depth + 1)?
            } else {
                Value::Null
            };
            Some(Value::Array(vec![item; count]))
        }
        "string" => Some(Value::String(string(object))),
        "integer" => Some(json!(number(object).ceil() as i64)),
        "number" => Number::from_f64(number(object)).map(Value::Number),
        "boolean" => Some(Value::Bool(false)),
        _ => Some(Value::Null),
    }
}

fn required(object: &Map<String, Value>) -> impl Iterator<Item = &str> {
    object
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn bound(object: &Map<String, Value>, key: &str) -> Option<f64> {
    object.get(key).and_then(Value::as_f64)
}

fn string(object: &Map<String, Value>) -> String {
    let known = match object.get("format").and_then(Value::as_str) {
        Some("date-time") => Some("2026-01-01T00:00:00Z"),
        Some("date") => Some("2026-01-01"),
        Some("time") => Some("00:00:00Z"),
        Some("email") => Some("someone@example.com"),
        Some("uri" | "url") => Some("https://example.com/"),
        Some("uuid") => Some("00000000-0000-0000-0000-000000000000"),
        _ => None,
    };
    if let Some(known) = known {
        return known.to_owned();
    }
    let min = bound(object, "minLength").unwrap_or(0.0) as usize;
    let max = bound(object, "maxLength").map_or(usize::MAX, |max| max as usize);
    if (min..=max).contains(&"example".len()) {
        "example".to_owned()
    } else {
        "x".repeat(min)
    }
}

/// Zero, moved into `[minimum, maximum]` (exclusive bounds moved past by one).
fn number(object: &Map<String, Value>) -> f64 {
    let low = bound(object, "minimum")
        .or_else(|| bound(object, "exclusiveMinimum").map(|low| low + 1.0))
        .unwrap_or(f64::MIN);
    let high = bound(object, "maximum")
        .or_else(|| bound(object, "exclusiveMaximum").map(|high| high - 1.0))
        .unwrap_or(f64::MAX);
    0.0_f64.max(low).min(high)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Contract;

    fn contract(schemas: serde_json::Value) -> Contract {
        let manifest = json!({
            "service": "s",
            "schemas": schemas,
            "operations": {
                "S.Run": {
                    "version": "v1",
                    "input": { "schema": "In" },
                    "output": { "schema": "Out" }
                }
            }
        });
        Contract::from_json(&manifest.to_string()).expect("a valid manifest")
    }

    #[test]
    fn example_fills_required_properties_within_their_bounds() {
        let contract = contract(json!({
            "Item": { "type": "object", "required": ["sku", "count"], "properties": {
                "sku": { "type": "string", "minLength": 10 },
                "count": { "type": "integer", "minimum": 3 },
                "note": { "type": "string" }
            }},
            "In": { "type": "object", "required": ["items", "when", "kind"], "properties": {
                "items": { "type": "array", "items": { "$ref": "Item" }, "minItems": 1 },
                "when": { "type": "string", "format": "date-time" },
                "kind": { "enum": ["b", "a"] }
            }, "additionalProperties": false },
            "Out": { "type": "number", "exclusiveMinimum": 0.5 }
        }));
        let spec = contract.operation("S.Run").expect("the operation");
        assert_eq!(
            spec.input.example(),
            Some(json!({
                "items": [{ "sku": "xxxxxxxxxx", "count": 3 }],
                "when": "2026-01-01T00:00:00Z",
                "kind": "b"
            }))
        );
        assert_eq!(spec.output.example(), Some(json!(1.5)));
    }

    #[test]
    fn example_is_none_when_a_pattern_cannot_be_met() {
        let contract = contract(json!({
            "In": { "type": "string", "pattern": "^[0-9]{4}$" },
            "Out": { "type": "boolean" }
        }));
        let spec = contract.operation("S.Run").expect("the operation");
        assert_eq!(spec.input.example(), None);
        assert_eq!(spec.output.example(), Some(json!(false)));
    }
}
