//! Presence payloads.
//!
//! A meta is rendered once, when it is tracked, as `{"phx_ref":..., <user fields>}` (plus
//! `phx_ref_prev` on updates); `presence_state` and `presence_diff` are assembled from those
//! pre-rendered texts.

use serde_json::{Map, Value};

use crate::encode::push_json_str;

/// Renders a meta: the user's object with `phx_ref` (and `phx_ref_prev`) set by the server.
pub fn render_meta(meta: &Map<String, Value>, phx_ref: &str, phx_ref_prev: Option<&str>) -> String {
    let mut out = String::from("{\"phx_ref\":");
    push_json_str(&mut out, phx_ref);
    if let Some(prev) = phx_ref_prev {
        out.push_str(",\"phx_ref_prev\":");
        push_json_str(&mut out, prev);
    }
    for (key, value) in meta {
        if key == "phx_ref" || key == "phx_ref_prev" {
            continue;
        }
        out.push(',');
        push_json_str(&mut out, key);
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Presences grouped by key: `(key, rendered metas)`.
pub type Group<'a> = Vec<(&'a str, Vec<&'a str>)>;

fn push_group(out: &mut String, group: &Group<'_>) {
    out.push('{');
    for (i, (key, metas)) in group.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, key);
        out.push_str(":{\"metas\":[");
        for (j, meta) in metas.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(meta);
        }
        out.push_str("]}");
    }
    out.push('}');
}

/// Renders a `presence_state` payload (`{}` when empty).
pub fn render_state(group: &Group<'_>) -> String {
    let mut out = String::new();
    push_group(&mut out, group);
    out
}

/// Renders a `presence_diff` payload; both `joins` and `leaves` are always present.
pub fn render_diff(joins: &Group<'_>, leaves: &Group<'_>) -> String {
    let mut out = String::from("{\"joins\":");
    push_group(&mut out, joins);
    out.push_str(",\"leaves\":");
    push_group(&mut out, leaves);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_and_diff() {
        let user = json!({"name": "Me", "phx_ref": "spoof"});
        let meta = render_meta(user.as_object().unwrap_or(&Map::new()), "F1", Some("F0"));
        assert_eq!(meta, r#"{"phx_ref":"F1","phx_ref_prev":"F0","name":"Me"}"#);
        let diff = render_diff(&vec![("user-1", vec![meta.as_str()])], &vec![]);
        assert_eq!(
            diff,
            r#"{"joins":{"user-1":{"metas":[{"phx_ref":"F1","phx_ref_prev":"F0","name":"Me"}]}},"leaves":{}}"#
        );
        assert_eq!(render_state(&vec![]), "{}");
    }
}
