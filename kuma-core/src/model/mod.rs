//! Typed specs of every resource type, with their validation.

pub mod common;
pub mod dataplane;
pub mod external_service;
pub mod gateway;
pub mod mesh;
pub mod policy;
pub mod system;
pub mod zone;
