//! Kuma's DNS: stable virtual IPs for the services of each mesh, and the DNS server that
//! answers `<service>.mesh` with them.
//!
//! - [`vips`]: the [`VipAllocator`](vips::VipAllocator) trait (which addresses),
//!   [`CidrVipAllocator`](vips::CidrVipAllocator) (Kuma's: from a CIDR), and
//!   [`VipTables`](vips::VipTables), which keeps each mesh's VIPs in the Config resource
//!   `kuma-<mesh>-dns-vips` exactly as Kuma does.
//! - [`zone`]: names to VIPs and the answer to one query, safe on any input.
//! - [`server`]: UDP and TCP serving of a zone.

pub mod server;
pub mod vips;
pub mod zone;
