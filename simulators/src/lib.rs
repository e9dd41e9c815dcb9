//! Simulators and the load generator: programs that play devices against a running hub.
//!
//! Layout: [`client`] is a small async MQTT 3.1.1/5 client (tokio + the project's codec) with a
//! bounded inflight window and batched writes; [`loadgen`] drives many such clients through a
//! [`loadgen::Scenario`] and measures delivered messages per second, latency (HDR histogram),
//! loss and duplicates; [`proc_stat`] reads CPU time from `/proc` so a report can say how much
//! of the machine the generator itself used. The `iothub-loadgen` binary is a thin CLI over
//! [`loadgen::run`].
//!
//! `iothub-sim` plays the rest of the world: [`fleet`] creates devices through the management
//! API and has them publish over every transport ([`transport`]: TCP, TLS, ws, wss, QUIC);
//! [`rest_sim`], [`sigfox_sim`] and [`lorawan_sim`] post to the hub's networks what a REST
//! service, the Sigfox backend and a LoRaWAN network server would (real PHYPayloads built
//! with the `lorawan` crate, ChirpStack v4 and The Things Stack v3 JSON). Each run ends with
//! a [`summary::Report`]: sent, accepted, refused, failed, latency, checks.
//!
//! This crate talks to a hub only over the network, like any other client: it depends on the
//! codec and the model, and must never depend on the engine, the adapters or the hub binary, so
//! that what it measures is what a real client would see.

pub mod client;
pub mod fleet;
pub mod http;
pub mod loadgen;
pub mod lorawan_sim;
pub mod proc_stat;
pub mod rest_sim;
pub mod sigfox_sim;
pub mod summary;
pub mod transport;
pub mod util;
