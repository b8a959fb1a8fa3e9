//! The core of a Kuma-compatible control plane: the resource model and its validation, the
//! storage abstraction ([`store::ResourceStore`]), the [`manager::ResourceManager`] that enforces
//! Kuma's rules on top of any store, and the control-plane configuration.
//!
//! ```
//! use kuma_core::resource::parse_yaml;
//!
//! let dp = parse_yaml(r#"
//! type: Dataplane
//! mesh: default
//! name: backend-1
//! networking:
//!   address: 192.168.0.2
//!   inbound:
//!   - port: 11011
//!     servicePort: 11012
//!     tags:
//!       kuma.io/service: backend
//!       kuma.io/protocol: http
//! "#).unwrap();
//! assert!(dp.validate().is_ok());
//! ```

pub mod bootstrap;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dataplane_files;
pub mod defaults;
pub mod duration;
pub mod manager;
pub mod model;
pub mod resource;
pub mod rules;
pub mod store;
pub mod validation;
