//! A small, deterministic YAML writer for the manifests `bottle render`
//! prints: block style, map keys sorted, every string that a YAML 1.1
//! reader could take for something else quoted.
//!
//! Why not a YAML crate: the input is already a `serde_json::Value`
//! (k8s-openapi's types serialise to it), and what must come out is a small,
//! fixed subset of YAML that `kubectl` (sigs.k8s.io/yaml, YAML 1.1 rules)
//! reads back as the same JSON. The choice, and the crates weighed, are in
//! docs/decisions.md ("YAML for `bottle render`"); a test reads every
//! rendered document back with an independent parser.
//!
//! Rules:
//! - maps in key order, sequences in order, `{}` / `[]` when empty;
//! - a string is written plain only when it is made of letters, digits and
//!   `-_./`, starts with a letter or `/`, and is not one of YAML 1.1's
//!   booleans or nulls (`y`, `no`, `on`, `null`, `~`…); everything else is
//!   double-quoted with every non-printable character escaped;
//! - a string of several lines without carriage returns, a leading space or
//!   trailing spaces is a literal block (`|`, `|-`, `|+` after its final
//!   newlines), so a PEM, a JSON file or a git config reads as itself (a tab
//!   after the block's indentation is content, as libyaml and go-yaml read
//!   it).

use serde_json::Value;
use std::fmt::Write as _;

/// The words YAML 1.1 reads as booleans or null when unquoted.
const RESERVED: &[&str] = &[
    "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~",
];

/// `value` as one YAML document (no `---`), ending in a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            out.push_str(&scalar_text(scalar, 0));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn is_nonempty_collection(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, at: usize) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        // The first key of a map inside a sequence item shares the `- ` line.
        if i > 0 || !out.ends_with("- ") {
            indent(out, at);
        }
        out.push_str(&string_text(k, at, true));
        out.push(':');
        write_value_after_key(out, &map[k], at);
    }
}

fn write_value_after_key(out: &mut String, v: &Value, at: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, at + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            // Kubernetes style: a sequence under a key sits at the key's column.
            write_seq(out, a, at);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar, at + 2));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], at: usize) {
    for item in items {
        indent(out, at);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, at + 2),
            Value::Array(a) if !a.is_empty() => {
                out.pop();
                out.push('\n');
                write_seq(out, a, at + 2);
            }
            scalar => {
                out.push_str(&scalar_text(scalar, at + 2));
                out.push('\n');
            }
        }
    }
}

fn scalar_text(v: &Value, at: usize) -> String {
    debug_assert!(!is_nonempty_collection(v));
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s, at, false),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A string as a key (`key`: never a block) or a value whose block lines
/// are indented by `at`.
fn string_text(s: &str, at: usize, key: bool) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    if !key && is_block(s) {
        return block(s, at);
    }
    quoted(s)
}

fn is_plain(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

fn is_block(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && s.chars().all(|c| c == '\n' || c == '\t' || printable(c))
        && s.lines().all(|l| !l.ends_with(' '))
}

fn block(s: &str, at: usize) -> String {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let mut out = String::from(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', at));
            out.push_str(line);
        }
    }
    // `|+` keeps the extra newlines as empty lines of the block.
    for _ in 1..trailing {
        out.push('\n');
    }
    out
}

/// YAML's printable set (1.1 and 1.2 agree on it) less the byte-order mark
/// and the characters YAML 1.1 reads as line breaks (NEL, U+2028, U+2029):
/// those are escaped, never written raw.
fn printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && !matches!(c, '\u{FEFF}' | '\u{2028}' | '\u{2029}')
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn back(yaml: &str) -> Value {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn the_shape_is_kubernetes_block_style() {
        let v = json!({
            "kind": "Pod",
            "metadata": {"name": "agent", "labels": {"dev.bottle.name": "demo"}},
            "spec": {"containers": [{"name": "a", "args": ["sleep", "infinity"], "ports": []}]},
        });
        assert_eq!(
            to_string(&v),
            "kind: Pod\nmetadata:\n  labels:\n    dev.bottle.name: demo\n  name: agent\nspec:\n  containers:\n  - args:\n    - sleep\n    - infinity\n    name: a\n    ports: []\n"
        );
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "null",
            "~",
            "true",
            "3128",
            "0755",
            "1e3",
            "1:20",
            "",
            " lead",
            "a: b",
            "#x",
            "*ref",
            "&a",
            "!tag",
            "-",
            "- x",
            "@x",
            "`x",
            "%x",
            "{a}",
            "[a]",
            "a,b",
            "10.96.0.0/12",
            "*.example.com",
        ] {
            let text = string_text(s, 0, false);
            assert!(text.starts_with('"'), "{s:?} written as {text}");
            assert_eq!(back(&format!("k: {text}\n")), json!({"k": s}), "{s:?}");
        }
        for s in [
            "demo",
            "bottle-demo",
            "dev.bottle.name",
            "/etc/bottle",
            "TCP",
        ] {
            assert_eq!(string_text(s, 0, false), s);
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let s = "a\u{7}b\u{7F}c\u{85}d\u{FEFF}e\"f\\g\th\ri\u{2028}j";
        let text = quoted(s);
        assert!(
            !text.contains('\u{7}') && !text.contains('\u{7F}'),
            "{text}"
        );
        assert_eq!(back(&format!("k: {text}\n")), json!({"k": s}));
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_that_keep_their_newlines() {
        for s in [
            "a\nb\n",
            "a\nb",
            "a\n\nb\n\n\n",
            "{\n  \"x\": 1\n}\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "[url \"http://x\"]\n\tinsteadOf = a\n\t\tdeeper\n",
        ] {
            let v = json!({"data": {"f": s}, "list": [s]});
            let y = to_string(&v);
            assert!(y.contains('|'), "{y}");
            assert_eq!(back(&y), v, "{s:?}\n{y}");
        }
        // A leading space or trailing spaces cannot be a block: quoted instead.
        for s in [" a\nb\n", "a \nb\n", "a\r\nb\n"] {
            assert!(string_text(s, 0, false).starts_with('"'), "{s:?}");
        }
    }

    #[test]
    fn nested_values_round_trip() {
        let v = json!({
            "a": [[1, 2], [], {}, {"x": [{"y": null}]}, true, 1.5, -3],
            "b": {"c": {"d": "e"}},
            "e": {},
            "f": [],
            "g": [{"name": "x", "value": "yes"}],
        });
        assert_eq!(back(&to_string(&v)), v);
    }

    #[test]
    fn keys_are_sorted_whatever_the_input_order() {
        let mut m = serde_json::Map::new();
        m.insert("z".into(), json!(1));
        m.insert("a".into(), json!(2));
        assert_eq!(to_string(&Value::Object(m)), "a: 2\nz: 1\n");
    }
}
