//! Kraken core.

pub mod manifest;
pub mod source;
