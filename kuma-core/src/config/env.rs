//! `KUMA_*` environment overrides.

use serde_json::Value;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ConfigError;

/// Keys whose variable Kuma does not derive from the key's path.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "xdsServer.dataplaneDeregistrationDelay",
        "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY",
    ),
    (
        "access.static.viewConfigDump.users",
        "KUMA_ACCESS_STATIC_GET_CONFIG_DUMP_USERS",
    ),
    (
        "access.static.viewConfigDump.groups",
        "KUMA_ACCESS_STATIC_GET_CONFIG_DUMP_GROUPS",
    ),
];

/// The environment variable for a dotted config key: `apiServer.http.port` →
/// `KUMA_API_SERVER_HTTP_PORT` (camelCase words split, all-caps segments such as `CIDR` kept).
pub fn env_name(key: &str) -> String {
    if let Some((_, v)) = EXCEPTIONS.iter().find(|(k, _)| *k == key) {
        return (*v).to_string();
    }
    let mut out = String::from("KUMA");
    for segment in key.split('.') {
        out.push('_');
        let chars: Vec<char> = segment.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
    }
    out
}

fn override_leaves(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    if let Value::Object(map) = value {
        for (k, v) in map.iter_mut() {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            override_leaves(v, &p, env, errors);
        }
        return;
    }
    let var = env_name(path);
    let Some(raw) = env(&var) else { return };
    let parsed = match value {
        Value::Bool(_) => match raw.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            other => Err(format!("{other:?} is not a boolean (true or false)")),
        },
        Value::Number(_) => raw
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| raw.trim().parse::<i64>().map(Value::from))
            .map_err(|_| format!("{raw:?} is not an integer")),
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        )),
        _ => Ok(Value::String(raw.clone())),
    };
    match parsed {
        Ok(v) => *value = v,
        Err(message) => errors.push(ConfigError::Env { var, message }),
    }
}

/// Applies every set variable to `cfg`.
pub(super) fn apply<T: Serialize + DeserializeOwned>(
    cfg: T,
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let mut value = serde_json::to_value(&cfg).map_err(|e| ConfigError::Env {
        var: "KUMA_*".into(),
        message: e.to_string(),
    })?;
    let mut errors = Vec::new();
    override_leaves(&mut value, "", &env, &mut errors);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    crate::resource::decode_value::<T>(value).map_err(|e| {
        let (field, message) = e
            .violations()
            .first()
            .map_or((String::new(), e.to_string()), |v| {
                (v.field.clone(), v.message.clone())
            });
        ConfigError::Env {
            var: env_name(&field),
            message,
        }
    })
}
