//! Kraken core.
