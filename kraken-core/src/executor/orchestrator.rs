//! Orchestration executor.
