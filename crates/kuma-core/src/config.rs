//! Control-plane configuration (placeholder, written next).
