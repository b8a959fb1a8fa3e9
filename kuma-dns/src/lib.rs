//! Kuma's DNS: stable virtual IPs for the services of each mesh, and the DNS server that
//! answers `<service>.mesh` with them.
//!
//! - [`vips`]: the [`VipAllocator`] trait (which addresses), [`CidrVipAllocator`] (Kuma's: from a
//!   CIDR), and [`VipTables`], which keeps each mesh's VIPs in the Config resource
//!   `kuma-<mesh>-dns-vips` exactly as Kuma does.
//! - [`zone`]: names to VIPs and the answer to one query, safe on any input.
//! - [`server`]: UDP and TCP serving of a zone, optionally forwarding other names upstream
//!   (kuma-dp's DNS proxy is one).
//! - [`config`]: the `dnsServer` section of the configuration ([`DnsServerConfig`]).
//! - [`jobs`]: the control plane's DNS jobs: allocating VIPs on the leader, following the stored
//!   tables into the served zone.
//!
//! It does not decide which instance allocates (the control plane passes its leadership to
//! [`jobs::allocate_vips`]) and has no features. [`VipAllocator`]'s documentation has an allocator of its own.
//!
//! ```
//! use kuma_dns::vips::service_table;
//! use kuma_dns::zone::Zone;
//!
//! let zone = Zone::new("mesh", 30).with_tables(&[service_table([("backend", "240.0.0.1")])]);
//! assert_eq!(zone.len(), 1);
//! ```

pub mod config;
pub mod jobs;
pub mod server;
pub mod vips;
pub mod zone;

pub use config::DnsServerConfig;
pub use server::DnsServer;
pub use vips::{CidrVipAllocator, VipAllocator, VipError, VipTables};
pub use zone::Zone;
