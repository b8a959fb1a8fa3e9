//! KDS (Kuma Discovery Service): how a Kuma-compatible global control plane and its zone
//! control planes share resources, compatible with Kuma 2.14 on the wire.
//!
//! Global owns meshes, secrets and policies and sends them to every zone; zones own their data
//! plane proxies and send them, with their insights and zone-written policies, to global. This
//! crate holds what both sides agree on:
//!
//! - [`directions`]: which types travel which way (the registry's KDS flags, Kuma's table), and
//!   which resources of those a side sends;
//! - [`names`]: the name a resource takes on the other side (Kuma's hash suffix, byte for
//!   byte);
//! - [`message`]: the resource as a KDS message carries it (`KumaResource` in an `Any`).

pub mod directions;
pub mod feed;
pub mod global;
pub mod grpc;
pub mod message;
pub mod names;
pub mod receiver;
pub mod sender;
pub mod specs;
pub mod stats;
pub mod zone;
