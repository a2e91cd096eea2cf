//! kinko's server: the customer interface (M1), deposit detection (M6), the withdrawal pipeline
//! (M9a/M9b, M13), wired over the store, the chain adapter and the signer.

pub mod aml;
pub mod api;
pub mod app;
pub mod audit;
pub mod btc_watcher;
pub mod clock;
pub mod cold;
pub mod config;
pub mod emergency;
pub mod erc20;
pub mod evacuation;
pub mod maintenance;
pub mod node_monitor;
pub mod notices;
pub mod pipeline;
pub mod reconciliation;
pub mod registry_sync;
pub mod sweeper;
pub mod tiers;
pub mod watcher;
pub mod web;
pub mod withdrawal_policy;

pub use app::AppState;
pub use config::Config;
