//! Workload identity for meshguard: SPIFFE IDs and a SPIFFE CA issuing X.509-SVIDs.
//! (The SPIFFE Workload API server and rotation are not built yet.)

pub mod agent;
pub mod ca;
pub mod spiffe_id;

pub use ca::{Ca, CaError, KeyType, Svid};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
