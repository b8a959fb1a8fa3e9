//! kumactl's configuration file (`~/.kumactl/config`), in Kuma's format: named control planes,
//! contexts pointing at them, and the current context.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KumactlConfig {
    /// The control planes kumactl knows.
    #[serde(default)]
    pub control_planes: Vec<ControlPlane>,
    /// Contexts, each naming a control plane.
    #[serde(default)]
    pub contexts: Vec<Context>,
    /// The context commands use.
    #[serde(default)]
    pub current_context: String,
}

/// One control plane, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub coordinates: Coordinates,
}

/// Where a control plane is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinates {
    /// Its API.
    pub api_server: ApiServer,
}

/// How to reach and authenticate to one control plane's API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    /// The API's URL (`http://localhost:5681`).
    pub url: String,
    /// `tokens` for user tokens; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_type: String,
    /// The authentication's settings (`token` for `tokens`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub auth_conf: std::collections::BTreeMap<String, String>,
    /// The CA the API's certificate is verified with (the only one trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<String>,
    /// Do not verify the API's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_verify: bool,
}

/// A context: a name for a control plane to use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// Its name.
    pub name: String,
    /// The control plane it uses.
    pub control_plane: String,
}

/// `$HOME/.kumactl/config`.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".kumactl").join("config")
}

impl KumactlConfig {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_norway::from_str(&text)
                .map_err(|e| format!("cannot parse {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes `path` (owner-only: it may hold tokens).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = serde_norway::to_string(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(())
    }

    /// Adds (or, with `overwrite`, replaces) a control plane and makes it current.
    pub fn add(&mut self, name: &str, api: ApiServer, overwrite: bool) -> Result<(), String> {
        let exists = self.control_planes.iter().any(|c| c.name == name);
        if exists && !overwrite {
            return Err(format!(
                "Control Plane with name {name:?} already exists. Use --overwrite to replace an existing one."
            ));
        }
        self.control_planes.retain(|c| c.name != name);
        self.contexts.retain(|c| c.name != name);
        self.control_planes.push(ControlPlane {
            name: name.into(),
            coordinates: Coordinates { api_server: api },
        });
        self.contexts.push(Context {
            name: name.into(),
            control_plane: name.into(),
        });
        self.current_context = name.into();
        Ok(())
    }

    /// The API of the current context (Kuma's default, `http://localhost:5681`, without one).
    pub fn current(&self) -> ApiServer {
        self.contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .and_then(|ctx| {
                self.control_planes
                    .iter()
                    .find(|c| c.name == ctx.control_plane)
            })
            .map(|c| c.coordinates.api_server.clone())
            .unwrap_or_else(|| ApiServer {
                url: "http://localhost:5681".into(),
                ..ApiServer::default()
            })
    }
}
