//! The JSON nesting limit: a request body that a worker will decode as JSON (a REST
//! channel's in the `json` data format, a JSON-RPC request, an admin invoke) may nest arrays
//! and objects [`MAX_JSON_DEPTH`] levels deep, no deeper. The server checks it before any
//! worker sees the body and answers 400 naming the limit.
//!
//! Python's JSON decoder recurses once per level and fails with a `RecursionError` near
//! 1,000 levels (less in a thread with a small stack); serde_json stops at 128. One limit
//! below both, checked in one place, makes a deep body a clear client error on every path
//! instead of a worker's 500 on one and a parse error on another.
//!
//! The check is a byte scanner, not a parse: it counts `[` and `{` against `]` and `}`
//! outside strings (minding backslash escapes) and stops as soon as the limit is passed, so
//! it costs one pass over the body and nothing for the body's size in memory. It does not
//! validate: a body that is not JSON is the worker's to refuse.

/// How deep arrays and objects may nest in a JSON request body.
pub const MAX_JSON_DEPTH: usize = 100;

/// The deepest nesting of arrays and objects in `body` read as JSON, counting no further
/// than `stop` (the result is then `stop + 1`).
pub fn depth(body: &[u8], stop: usize) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > stop {
                        return max;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether `body` nests deeper than [`MAX_JSON_DEPTH`].
pub fn too_deep(body: &[u8]) -> bool {
    depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
}

/// The message of the 400 answered to a body that nests too deep.
pub fn message() -> String {
    format!("the JSON body nests deeper than the limit of {MAX_JSON_DEPTH} levels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn nested(n: usize) -> String {
        "[".repeat(n) + &"]".repeat(n)
    }

    #[test]
    fn counts_arrays_and_objects_outside_strings() {
        assert_eq!(depth(b"", 10), 0);
        assert_eq!(depth(b"12", 10), 0);
        assert_eq!(depth(b"[]", 10), 1);
        assert_eq!(depth(br#"{"a":[1,{"b":[]}],"c":{}}"#, 10), 4);
        // Brackets in strings, escaped quotes and backslashes included, do not count.
        assert_eq!(depth(br#"["[[[{{", "\"[[[", "\\", ["x"]]"#, 10), 2);
        assert_eq!(depth(br#""\\\"[[[""#, 10), 0);
        // It stops counting past `stop`.
        assert_eq!(depth(nested(1000).as_bytes(), 5), 6);
    }

    #[test]
    fn the_limit_is_inclusive() {
        assert!(!too_deep(nested(MAX_JSON_DEPTH).as_bytes()));
        assert!(too_deep(nested(MAX_JSON_DEPTH + 1).as_bytes()));
        assert!(too_deep(b"[".repeat(1000).as_slice()));
        assert!(message().contains(&MAX_JSON_DEPTH.to_string()));
    }

    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Strings full of the bytes the scanner must skip.
            "[\\[\\]{}\"\\\\a-z ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(40, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[\\[{\"\\\\a-z]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Where serde_json parses a text, the scanner's depth is the parsed value's.
        #[test]
        fn agrees_with_serde_json(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let parsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(depth(text.as_bytes(), usize::MAX), value_depth(&parsed));
        }

        /// On arbitrary bytes it never panics, and agrees wherever serde_json parses them.
        #[test]
        fn agrees_on_arbitrary_text(text in "[\\[\\]{}\"\\\\,:0-9a ]{0,64}") {
            let d = depth(text.as_bytes(), usize::MAX);
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                prop_assert_eq!(d, value_depth(&v));
            }
        }
    }
}
