//! Kraken core.

pub mod manifest;
