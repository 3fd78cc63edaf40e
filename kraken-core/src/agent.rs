//! Agent composition.
