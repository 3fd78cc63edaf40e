//! Runnable compositions of kraken-core live next to this crate as examples.
