//! iothub's durable MQTT state (issue 6): the engine's [`iothub_engine::Journal`] written to
//! the write-ahead log (`iothub-wal`), replayed into the engine at startup, compacted as
//! it grows. It knows the engine's journal operations and the WAL's records, and never a
//! socket, the wire format or the control plane.
//!
//! - `codec`: the byte layout of each operation (one WAL record kind each).
//! - `state`: [`DurableState`], the live state the log describes, with the records each
//!   piece needs (replay, restore, compaction).
//! - `store`: [`Store`], the writer thread with group commit and the "durable up to ticket N"
//!   signal connections wait on before they acknowledge.
//!
//! See `adapters/wal` for the record format, recovery rules and fsync policies.

pub mod codec;
mod state;
mod store;

pub use codec::DecodeError;
pub use iothub_wal::FsyncPolicy;
pub use state::{DurableState, StateCounts};
pub use store::{OpenReport, Opened, Store, StoreError, StoreOptions};
