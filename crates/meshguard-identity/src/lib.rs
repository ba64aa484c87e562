//! Workload identity for meshguard: SPIFFE IDs, a SPIFFE CA issuing X.509-SVIDs and
//! JWT-SVIDs, and the SPIFFE Workload API server that hands them to workloads and rotates them.

#![forbid(unsafe_code)]

pub mod agent;
pub mod ca;
pub mod jwt;
pub mod spiffe_id;
pub mod uds_authority;

pub use ca::{Ca, CaError, KeyType, Svid};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
