//! warmpool: warm pools of containers, one per agent type, that run tasks in about a
//! millisecond. See the README for the tour and docs/ for the contract.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
#[cfg(test)]
mod contract_tests;
pub mod daemon;
pub mod exec;
#[cfg(test)]
mod lifecycle_tests;
pub mod mcp;
pub mod metrics;
pub mod pool;
pub mod runtime;
pub mod scaling;
pub mod session;
pub mod shim;
pub mod shim_proto;
pub mod simulate;
pub mod supervisor;
pub mod task;
pub mod workspace;
#[cfg(test)]
mod workspace_volume_tests;
