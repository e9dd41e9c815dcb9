//! The broker engine.
