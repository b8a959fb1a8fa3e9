//! Where resources are in Kuma's HTTP API, and the names kumactl's users give their types.

use kuma_core::resource::{ResourceType, Scope};

/// The type a command-line word names (`meshes`, `mesh`, `meshtrafficpermissions`,
/// `global-secrets`...), and whether it was plural.
pub fn resolve_type(word: &str) -> Option<(ResourceType, bool)> {
    // Kuma accepts `global-secrets` and `zone-ingresses` as well as `globalsecrets`...
    let word = word.to_ascii_lowercase().replace('-', "");
    for t in ResourceType::ALL.iter().copied() {
        let singular = t.name().to_ascii_lowercase();
        let plural = if singular.ends_with('s') {
            format!("{singular}es")
        } else {
            format!("{singular}s")
        };
        let collection = t.collection().unwrap_or_default().replace('-', "");
        if word == plural || word == collection {
            return Some((t, true));
        }
        if word == singular {
            return Some((t, false));
        }
    }
    None
}

/// The API path of `rtype`'s collection in `mesh` (or of resource `name` in it).
pub fn resource_path(
    rtype: ResourceType,
    mesh: &str,
    name: Option<&str>,
) -> Result<String, String> {
    let collection = rtype
        .collection()
        .ok_or_else(|| format!("{rtype} is not served by the API"))?;
    let base = match rtype.scope() {
        Scope::Mesh => format!("/meshes/{mesh}/{collection}"),
        Scope::Global => format!("/{collection}"),
    };
    Ok(match name {
        Some(n) => format!("{base}/{n}"),
        None => base,
    })
}
