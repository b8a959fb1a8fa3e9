//! Typed specs of every resource type, with their validation.

pub mod common;
pub mod dataplane;
pub mod gateway;
pub mod mesh;
pub mod policy;
pub mod system;
pub mod zone;
