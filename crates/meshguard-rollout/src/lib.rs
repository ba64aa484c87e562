//! Progressive rollout on top of the engine: the decision log read back as a record of traffic
//! (`record`), replayed against a candidate policy set (`simulate`), and reported for people and
//! pull requests (`report`). Replay decides with the same [`meshguard_engine::Engine`] that
//! `serve`, `proxy` and `check` use, so a simulated outcome is the outcome those would give.

#![forbid(unsafe_code)]

pub mod graph;
pub mod recommend;
pub mod record;
pub mod report;
pub mod simulate;

pub use graph::Graph;
pub use record::Recorded;
pub use simulate::{simulate, Change, Options, Report, SimulateError};
