//! KDS (Kuma Discovery Service): how a Kuma-compatible global control plane and its zone
//! control planes share resources, compatible with Kuma 2.14 on the wire.
//!
//! Global owns meshes, secrets and policies and sends them to every zone; zones own their data
//! plane proxies and send them, with their insights and zone-written policies, to global.
//!
//! - [`directions`]: which types travel which way (the registry's KDS flags, Kuma's table), and
//!   which resources of those a side sends;
//! - [`names`]: the name a resource takes on the other side (Kuma's hash suffix, byte for
//!   byte);
//! - [`message`] and [`specs`]: the resource as a KDS message carries it (`KumaResource` in an
//!   `Any`; JSON specs for the policy kinds, Kuma's protobuf messages for the older kinds);
//! - [`grpc`]: the `KDSSyncService` and `GlobalKDSService` gRPC services;
//! - [`feed`], [`sender`], [`receiver`], [`stats`]: the two ends of a sync stream (Envoy's delta
//!   xDS with Kuma's conventions) and the store sync behind the receiving one;
//! - [`global`] and [`zone`]: global's server (with the zones' status) and a zone's client.
//!
//! `kuma-cp` assembles them into its `global` and `zone` modes.

pub mod directions;
pub mod feed;
mod frames;
pub mod global;
pub mod grpc;
pub mod message;
pub mod names;
pub mod receiver;
pub mod sender;
pub mod specs;
pub mod stats;
pub mod zone;
