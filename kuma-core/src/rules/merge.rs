//! Merging the `default`s of policy entries, later entries winning.
//!
//! The merge is RFC 7396 (JSON merge patch) applied in order: objects merge key by key, any other
//! value (arrays included) replaces what came before, `null` removes a key. Fields whose name
//! starts with `append` are the exception: their arrays concatenate across every entry.
//! MeshHTTPRoute's `rules` merge by their `matches` (see [`merge_route_rules`]).

use serde_json::{Map, Value};

/// Merges `confs` in order (the last has the highest precedence).
pub fn merge_confs<'a>(confs: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Value::Object(Map::new());
    for conf in confs {
        merge_into(&mut out, conf);
    }
    out
}

fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(items) if key.starts_with("append") => match target.get_mut(key) {
                Some(Value::Array(existing)) => existing.extend(items.iter().cloned()),
                _ => {
                    target.insert(key.clone(), value.clone());
                }
            },
            Value::Object(_) => merge_into(target.entry(key.clone()).or_insert(Value::Null), value),
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Merges MeshHTTPRoute `to` confs (`{"rules": [{matches, default}]}`), lowest precedence first.
///
/// Rules with equal `matches` merge their `default`s (later wins). The result lists the rules of
/// the highest-precedence policy first, each policy's rules in the order written, so that when
/// two rules are equally specific the one written first in the strongest policy wins.
pub fn merge_route_rules<'a>(confs: impl IntoIterator<Item = &'a Value>) -> Value {
    // (matches, defaults lowest precedence first), in order of first appearance counted from the
    // highest-precedence policy.
    let confs: Vec<&Value> = confs.into_iter().collect();
    let mut merged: Vec<(&Value, Vec<&Value>)> = Vec::new();
    for conf in confs.iter().rev() {
        let rules = conf.get("rules").and_then(Value::as_array);
        for rule in rules.into_iter().flatten() {
            let matches = rule.get("matches").unwrap_or(&Value::Null);
            let default = rule.get("default").unwrap_or(&Value::Null);
            match merged.iter_mut().find(|(m, _)| *m == matches) {
                // Seen in a stronger policy: this weaker default goes underneath.
                Some((_, defaults)) => defaults.insert(0, default),
                None => merged.push((matches, vec![default])),
            }
        }
    }
    let rules: Vec<Value> = merged
        .into_iter()
        .map(|(matches, defaults)| {
            serde_json::json!({
                "matches": matches,
                "default": merge_confs(defaults),
            })
        })
        .collect();
    serde_json::json!({ "rules": rules })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_wins_field_by_field_and_arrays_replace() {
        let a = json!({"connectionTimeout": "2s", "http": {"requestTimeout": "5s", "x": 1}, "list": [1, 2]});
        let b = json!({"http": {"requestTimeout": "9s"}, "list": [3]});
        assert_eq!(
            merge_confs([&a, &b]),
            json!({"connectionTimeout": "2s", "http": {"requestTimeout": "9s", "x": 1}, "list": [3]})
        );
    }

    #[test]
    fn append_fields_concatenate_and_null_removes() {
        let a = json!({"appendModifications": [{"a": 1}], "keep": true, "drop": 1});
        let b = json!({"appendModifications": [{"b": 2}], "drop": null});
        let c = json!({"nested": {"appendProfiles": [1]}});
        let d = json!({"nested": {"appendProfiles": [2]}});
        assert_eq!(
            merge_confs([&a, &b, &c, &d]),
            json!({"appendModifications": [{"a": 1}, {"b": 2}], "keep": true, "nested": {"appendProfiles": [1, 2]}})
        );
    }

    #[test]
    fn route_rules_merge_by_matches() {
        let weak = json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": [{"kind": "MeshService", "name": "v1"}], "filters": [1]}},
            {"matches": [{"method": "GET"}], "default": {"backendRefs": []}},
        ]});
        let strong = json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": [{"kind": "MeshService", "name": "v2"}]}},
        ]});
        assert_eq!(
            merge_route_rules([&weak, &strong]),
            json!({"rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": [{"kind": "MeshService", "name": "v2"}], "filters": [1]}},
                {"matches": [{"method": "GET"}], "default": {"backendRefs": []}},
            ]})
        );
    }
}
