//! Worker executor.
