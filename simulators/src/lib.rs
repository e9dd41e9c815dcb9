//! Simulators and the load generator.
