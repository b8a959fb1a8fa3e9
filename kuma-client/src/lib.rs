//! A client of a Kuma-compatible control plane's HTTP API, as kumactl uses it.
//!
//! - [`Client`]: requests to one control plane's API (JSON, user tokens, TLS with the control
//!   plane's CA), Kuma's error bodies as [`ApiFailure`];
//! - [`config`]: kumactl's configuration file (`~/.kumactl/config`), in Kuma's format;
//! - [`paths`]: where each resource type is in the API, and the names users give types;
//! - [`output`]: tables with Kuma's columns, YAML, JSON.
//!
//! It does not parse command lines (the `kumactl` binary does) and links no control plane.
//!
//! ```no_run
//! # async fn run() -> Result<(), kuma_client::Error> {
//! use kuma_client::Client;
//! use kuma_client::config::ApiServer;
//!
//! let client = Client::new(&ApiServer { url: "http://localhost:5681".into(), ..Default::default() })?;
//! let meshes = client.get("/meshes").await?;
//! println!("{} meshes", meshes["total"]);
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod output;
pub mod paths;

pub use client::{ApiFailure, Client, Error};
