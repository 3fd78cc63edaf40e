//! Criterion benches for Kraken live in `benches/`; see docs/performance.md.
