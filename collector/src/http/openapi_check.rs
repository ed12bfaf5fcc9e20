//! `/openapi.json` says of every parameter exactly what the server checks: each documented
//! pattern is tested here against the server's own validation, over generated inputs, so a
//! client generated from the document sends only requests the server takes (and the
//! document never advertises a parameter as a bare string).

use crate::calendar::parse_month;
use crate::ids::is_valid_id;
use proptest::prelude::*;
use serde_json::Value;
use tally_proto::metric::validate_metric_name;

fn document() -> Value {
    serde_json::from_str(include_str!("openapi.json")).expect("openapi.json parses")
}

/// The parameter `name`'s schema (the same wherever it is used; checked).
fn schema(name: &str) -> Value {
    let doc = document();
    let mut found: Option<Value> = None;
    for ops in doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == name {
                    if let Some(f) = &found {
                        assert_eq!(f, &p["schema"], "{name} is documented two ways");
                    }
                    found = Some(p["schema"].clone());
                }
            }
        }
    }
    found.unwrap_or_else(|| panic!("no parameter {name}"))
}

fn regex_of(schema: &Value) -> regex::Regex {
    regex::Regex::new(schema["pattern"].as_str().expect("a pattern")).expect("a valid regex")
}

/// The pattern and the length bounds of a string schema.
fn matches(schema: &Value, s: &str) -> bool {
    let len = s.chars().count() as u64;
    regex_of(schema).is_match(s)
        && schema["minLength"].as_u64().is_none_or(|m| len >= m)
        && schema["maxLength"].as_u64().is_none_or(|m| len <= m)
}

#[test]
fn every_parameter_is_constrained() {
    let doc = document();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let s = &p["schema"];
                let constrained = s.get("enum").is_some()
                    || s.get("pattern").is_some()
                    || s["anyOf"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|x| x.get("pattern").is_some()));
                assert!(
                    constrained,
                    "{method} {path}: parameter {} is documented as a bare string",
                    p["name"]
                );
            }
        }
    }
}

fn inputs() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,70}",
        "[a-z0-9_.]{0,70}",
        "[0-9]{4}-[0-9]{1,2}",
        ".{0,20}",
        "[a-zA-Z0-9_ .%/-]{0,12}",
    ]
}

proptest! {
    #[test]
    fn id_pattern_is_is_valid_id(s in inputs()) {
        for name in ["customer", "license", "agent"] {
            prop_assert_eq!(matches(&schema(name), &s), is_valid_id(&s), "{} {:?}", name, s);
        }
    }

    #[test]
    fn metric_pattern_is_the_metric_rule(s in inputs()) {
        prop_assert_eq!(matches(&schema("metric"), &s), validate_metric_name(&s).is_ok(), "{:?}", s);
    }

    #[test]
    fn limit_pattern_is_parse_limit(s in prop_oneof![inputs(), "[0-9+-]{0,5}"]) {
        prop_assert_eq!(matches(&schema("limit"), &s), super::handlers::parse_limit(&s).is_some(), "{:?}", s);
    }

    #[test]
    fn before_seq_pattern_is_parse_seq(s in prop_oneof![inputs(), "[0-9+-]{0,21}"]) {
        prop_assert_eq!(matches(&schema("before_seq"), &s), super::handlers::parse_seq(&s).is_some(), "{:?}", s);
    }

    #[test]
    fn digest_pattern_is_parse_digest(s in prop_oneof![inputs(), "[0-9a-fA-F]{63,65}", " ?[0-9a-f]{64} ?"]) {
        prop_assert_eq!(matches(&schema("digest"), &s), super::handlers::parse_digest(&s).is_some(), "{:?}", s);
    }

    #[test]
    fn period_pattern_is_parse_month(s in inputs()) {
        prop_assert_eq!(regex_of(&schema("period")).is_match(&s), parse_month(&s).is_some(), "{:?}", s);
    }

    /// Every bound the document allows (a real calendar date, or a whole UTC hour in RFC
    /// 3339) is accepted by the usage query's parser.
    #[test]
    fn documented_bounds_are_accepted(
        y in 1970u32..2200, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24,
        off in -14i32..=14, frac in prop::bool::ANY, date_only in prop::bool::ANY,
    ) {
        let value = if date_only {
            format!("{y:04}-{mo:02}-{d:02}")
        } else {
            let zone = if off == 0 { "Z".to_string() } else {
                format!("{}{:02}:00", if off < 0 { '-' } else { '+' }, off.abs())
            };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:00:00{}{zone}", if frac { ".0" } else { "" })
        };
        for name in ["from", "to"] {
            let any = schema(name)["anyOf"].as_array().unwrap().clone();
            prop_assert!(any.iter().any(|alt| regex_of(alt).is_match(&value)), "{} {:?} not documented", name, value);
            let parsed = crate::usage::parse_query(&[(name.to_string(), value.clone())], false);
            prop_assert!(parsed.is_ok(), "{} {:?} documented but refused: {:?}", name, value, parsed.err());
        }
    }
}

/// What the bound patterns leave out, the server refuses too (a sample of the ways to be
/// off the hour).
#[test]
fn bounds_off_the_hour_are_neither_documented_nor_accepted() {
    for value in [
        "2026-01-01T10:30:00Z",
        "2026-01-01T10:00:01Z",
        "2026-01-01T10:00:00+05:30",
        "2026-01-01T10:00:00.5Z",
    ] {
        let any = schema("from")["anyOf"].as_array().unwrap().clone();
        assert!(
            !any.iter().any(|alt| regex_of(alt).is_match(value)),
            "{value} documented"
        );
        assert!(
            crate::usage::parse_query(&[("from".into(), value.into())], false).is_err(),
            "{value} accepted"
        );
    }
}
