//! The node monitor (C6, C7, C10): polls every configured node of the chain — the read node, the send node
//! when it is a different one, and the cross-check nodes — applies `kinko_core::node_health`, and stores
//! the verdict (`health_checks`, component `nodes:<chain>`). The withdrawal pipeline signs, sends and
//! settles only under a fresh healthy verdict ([`withdrawals_halted`]), so:
//! - a halt stops withdrawals within one pipeline cycle; withdrawals requested meanwhile are accepted and
//!   queue (`approved`), and proceed once the nodes are healthy again (nothing is signed while halted, so
//!   nothing is lost by waiting, and customers need not ask again);
//! - a monitor that stops writing halts them too (the verdict goes stale, fail closed);
//! - the halt and the resume are each written once, with an ops event and a webhook alert through the
//!   notice outbox, in the same transaction as the verdict change.
//!
//! The same poll also checks the signer's seal (component `signer`) and refreshes the Prometheus gauges
//! (withdrawals per state, watcher lag, node heads, hot-wallet balance against its cap, sealed state).
//!
//! Several instances: the monitor runs under the chain's exclusive lease (`node-monitor:<chain>`, like
//! deposit detection), so one instance writes verdicts and alerts; the others stand by.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use kinko_chain::evm::rpc::{EvmRpc, RpcError};
use kinko_core::node_health::{self, HaltReason, HeadProgress, Health, HealthConfig, NodeObservation, NodeStatus};
use kinko_store::Store;
use kinko_store::StoreError;
use kinko_store::monitoring::{HealthAlert, HealthCheckRow, NewHealthCheck};
use kinko_store::notices::NewNotice;
use kinko_store::ops_requests::NewOpsEvent;
use serde::{Deserialize, Serialize};

use crate::api::Metrics;
use crate::clock::now_ms;
use crate::config::{ConfigError, EthereumConfig};

/// Bound on cross-check nodes.
pub const CROSS_CHECK_NODES_MAX: usize = 8;
/// Bounds on `[ethereum.monitor]` numbers.
const POLL_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=60_000;
const STALL_AFTER_MS_MAX: u64 = 24 * 3_600_000;
const LAG_BLOCKS_MAX_MAX: u64 = 100_000;
/// Component name of the signer's seal in `health_checks`.
pub const SIGNER_COMPONENT: &str = "signer";
/// Who the monitor's ops events name as actor.
pub const MONITOR_ACTOR: &str = "system:node-monitor";
/// Bound on the signer status call (a hung socket must not stall the node checks).
pub const SIGNER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `[ethereum.monitor]`: node-monitor thresholds (C6, C7, C10).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeMonitorConfig {
    /// How often every node is polled (default 2000).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// No new block on a node for this long halts withdrawals (C6, C10). Default 180000 (15 Ethereum
    /// slots); 0 turns the rule off (the dev default: anvil mines only on demand).
    #[serde(default = "default_stall_after_ms")]
    pub stall_after_ms: u64,
    /// A node more than this many blocks behind the best head halts withdrawals (default 5).
    #[serde(default = "default_lag_blocks_max")]
    pub lag_blocks_max: u64,
    /// The hot wallet's balance cap (base units, decimal string), exported beside the balance as
    /// `kinko_hot_wallet_cap_wei` for alerting (K13). Unset: only the balance is exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_wallet_cap: Option<kinko_core::Amount>,
    /// The identifier webhook alerts carry as recipient, for the receiving relay to route on.
    #[serde(default = "default_alert_recipient")]
    pub alert_recipient: String,
}

impl Default for NodeMonitorConfig {
    fn default() -> Self {
        NodeMonitorConfig {
            poll_interval_ms: default_poll_interval_ms(),
            stall_after_ms: default_stall_after_ms(),
            lag_blocks_max: default_lag_blocks_max(),
            hot_wallet_cap: None,
            alert_recipient: default_alert_recipient(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    2_000
}
fn default_stall_after_ms() -> u64 {
    180_000
}
fn default_lag_blocks_max() -> u64 {
    5
}
fn default_alert_recipient() -> String {
    "operations".into()
}

/// Checks `ethereum.cross_check_rpc_urls` and `[ethereum.monitor]`; errors name the field.
pub fn validate_config(eth: &EthereumConfig) -> Result<(), ConfigError> {
    let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
    if eth.cross_check_rpc_urls.len() > CROSS_CHECK_NODES_MAX {
        return invalid("ethereum.cross_check_rpc_urls", format!("at most {CROSS_CHECK_NODES_MAX} nodes"));
    }
    for (i, url) in eth.cross_check_rpc_urls.iter().enumerate() {
        if let Err(e) = EvmRpc::new(url) {
            // The URL itself is not quoted: node URLs often carry API keys.
            return invalid("ethereum.cross_check_rpc_urls", format!("entry {i}: {e}"));
        }
        if *url == eth.rpc_url {
            return invalid("ethereum.cross_check_rpc_urls", format!("entry {i} is rpc_url itself: no cross-check"));
        }
    }
    let m = &eth.monitor;
    if !POLL_INTERVAL_MS_RANGE.contains(&m.poll_interval_ms) {
        return invalid("ethereum.monitor.poll_interval_ms", "must be between 50 and 60000".into());
    }
    if m.stall_after_ms != 0 && !(m.poll_interval_ms..=STALL_AFTER_MS_MAX).contains(&m.stall_after_ms) {
        return invalid(
            "ethereum.monitor.stall_after_ms",
            "must be 0 (off) or between poll_interval_ms and one day".into(),
        );
    }
    if m.lag_blocks_max > LAG_BLOCKS_MAX_MAX {
        return invalid("ethereum.monitor.lag_blocks_max", format!("must be at most {LAG_BLOCKS_MAX_MAX}"));
    }
    let r = &m.alert_recipient;
    if r.is_empty()
        || r.len() > kinko_store::notices::RECIPIENT_LEN_MAX
        || r.chars().any(|c| c.is_control() || c == ' ')
    {
        return invalid("ethereum.monitor.alert_recipient", "must be 1 to 254 bytes without spaces".into());
    }
    Ok(())
}

/// The `health_checks` component of a chain's nodes.
pub fn nodes_component(chain: &str) -> String {
    format!("nodes:{chain}")
}

/// Whether withdrawals on `chain` must wait: true unless the stored verdict on its nodes is healthy and
/// still valid at `now_ms` (no verdict yet, a halted one, or a stale one halt). The pipeline's gate.
pub async fn withdrawals_halted(store: &Store, chain: &str, now_ms: i64) -> Result<bool, StoreError> {
    let verdict = store.health_check(&nodes_component(chain)).await?;
    Ok(!node_health::withdrawals_may_proceed(verdict.map(|v| (v.healthy, v.valid_until_ms)), now_ms))
}

/// What the monitor watches besides the nodes.
#[derive(Clone, Debug)]
pub struct MonitorTargets {
    pub chain: String,
    pub asset: kinko_core::AssetCode,
    pub chain_id: u64,
    pub confirmations: u64,
    pub instance_id: String,
    /// The hot wallet (lower-case 0x address), for the balance gauge.
    pub hot_wallet: String,
    /// The signer process's socket (`signer.mode = "remote"`); `None`: the in-process signer, unsealed
    /// for as long as this process runs.
    pub signer_socket: Option<PathBuf>,
}

struct Node {
    label: String,
    rpc: EvmRpc,
    progress: HeadProgress,
    /// Set once the node reported the configured chain id (C3); a node on another chain is unreachable.
    chain_checked: bool,
}

pub struct NodeMonitor {
    store: Store,
    targets: MonitorTargets,
    config: NodeMonitorConfig,
    nodes: Vec<Node>,
    metrics: Option<Metrics>,
    statuses_seen: BTreeSet<String>,
}

impl NodeMonitor {
    /// The read node, the send node when configured apart from it (C7), and the cross-check nodes.
    pub fn new(
        store: Store,
        eth: &EthereumConfig,
        targets: MonitorTargets,
        metrics: Option<Metrics>,
    ) -> Result<NodeMonitor, RpcError> {
        let mut nodes = Vec::new();
        let mut add = |label: String, url: &str| -> Result<(), RpcError> {
            let rpc = EvmRpc::new(url)?;
            nodes.push(Node { label, rpc, progress: HeadProgress::default(), chain_checked: false });
            Ok(())
        };
        add("read".into(), &eth.rpc_url)?;
        if let Some(send) = eth.send_rpc_url.as_deref().filter(|s| *s != eth.rpc_url) {
            add("send".into(), send)?;
        }
        for (i, url) in eth.cross_check_rpc_urls.iter().take(CROSS_CHECK_NODES_MAX).enumerate() {
            add(format!("cross-check-{}", i + 1), url)?;
        }
        Ok(NodeMonitor { store, targets, config: eth.monitor.clone(), nodes, metrics, statuses_seen: BTreeSet::new() })
    }

    fn health_config(&self) -> HealthConfig {
        HealthConfig {
            stall_after_ms: self.config.stall_after_ms,
            lag_blocks_max: self.config.lag_blocks_max,
            confirmations: self.targets.confirmations,
        }
    }

    /// Runs while this instance holds the chain's monitor lease, until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let job = format!("node-monitor:{}", self.targets.chain);
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let _lease = loop {
            if *shutdown.borrow() {
                return;
            }
            match self.store.try_exclusive(&job).await {
                Ok(Some(lease)) => break lease,
                Ok(None) => tracing::debug!(%job, "another instance runs the node monitor; standing by"),
                Err(e) => tracing::warn!(%job, error = %e, "could not take the node-monitor lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval * 4) => {}
                _ = shutdown.changed() => {}
            }
        };
        loop {
            if *shutdown.borrow() {
                return;
            }
            // A hung node can hold a poll for the RPC timeout: shutdown does not wait for it.
            let polled = tokio::select! {
                r = self.poll_once() => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = polled {
                // The verdict was not written: it goes stale and withdrawals halt (fail closed).
                tracing::error!(error = %e, "node monitor could not record its verdict");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One poll: observe every node, decide, record the verdict (and the alert on a change), refresh the
    /// gauges. Returns the verdict.
    pub async fn poll_once(&mut self) -> Result<Health, StoreError> {
        let observations = self.observe().await;
        let now = now_ms();
        let health = node_health::evaluate(&observations, &self.health_config(), now);
        self.record(&health, now).await?;
        self.check_signer(now).await;
        self.export_metrics(&health, &observations).await;
        Ok(health)
    }

    /// Asks every node, concurrently, for its head; then for the hash at the check height.
    async fn observe(&mut self) -> Vec<NodeObservation> {
        let chain_id = self.targets.chain_id;
        let mut heads = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let (rpc, check_chain) = (n.rpc.clone(), !n.chain_checked);
            heads.spawn(async move { (i, head_of(&rpc, check_chain, chain_id).await) });
        }
        let mut answers: BTreeMap<usize, Result<(u64, [u8; 32]), String>> = BTreeMap::new();
        while let Some(joined) = heads.join_next().await {
            if let Ok((i, answer)) = joined {
                answers.insert(i, answer);
            }
        }
        let now = now_ms();
        let mut heads_seen = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(Ok((head, _))) = answers.get(&i) {
                n.chain_checked = true;
                heads_seen.push(*head);
            }
        }
        let check_height = node_health::check_height(&heads_seen, self.targets.confirmations);
        let mut hashes = tokio::task::JoinSet::new();
        if let Some(height) = check_height {
            for (i, n) in self.nodes.iter().enumerate() {
                if matches!(answers.get(&i), Some(Ok(_))) {
                    let rpc = n.rpc.clone();
                    hashes.spawn(async move { (i, rpc.block_hash(height).await.map_err(|e| e.to_string())) });
                }
            }
        }
        let mut hash_answers = BTreeMap::new();
        while let Some(joined) = hashes.join_next().await {
            if let Ok((i, answer)) = joined {
                hash_answers.insert(i, answer);
            }
        }
        let mut out = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let status = match (answers.remove(&i), hash_answers.remove(&i), check_height) {
                (Some(Ok((head, head_hash))), hash, height) => match hash {
                    Some(Err(error)) => NodeStatus::Unreachable { error },
                    hash => NodeStatus::Answered {
                        head,
                        last_new_block_at_ms: n.progress.observe(head, head_hash, now),
                        hashes: match (height, hash) {
                            (Some(h), Some(Ok(found))) => [(h, found)].into(),
                            _ => BTreeMap::new(),
                        },
                    },
                },
                (Some(Err(error)), _, _) => NodeStatus::Unreachable { error },
                (None, _, _) => NodeStatus::Unreachable { error: "the check did not finish".into() },
            };
            out.push(NodeObservation { node: n.label.clone(), status });
        }
        out
    }

    async fn record(&self, health: &Health, now: i64) -> Result<(), StoreError> {
        let component = nodes_component(&self.targets.chain);
        let reasons_json = serde_json::to_string(health.reasons()).unwrap_or_else(|_| "[]".into());
        let check = NewHealthCheck {
            component: &component,
            healthy: health.is_healthy(),
            reasons_json: &reasons_json,
            checked_by: &self.targets.instance_id,
            now_ms: now,
            valid_until_ms: now.saturating_add(node_health::stale_after_ms(self.config.poll_interval_ms) as i64),
        };
        let chain = self.targets.chain.clone();
        let change = self
            .store
            .record_health_check(&check, |t, previous| self.alert(t, previous, &chain, health.reasons(), now))
            .await?;
        match change {
            node_health::Transition::Halted => {
                let reasons: Vec<String> = health.reasons().iter().map(ToString::to_string).collect();
                tracing::error!(chain = %chain, ?reasons, "withdrawals halted: the chain's nodes are unhealthy (C6, C10)");
            }
            node_health::Transition::Resumed => {
                tracing::warn!(chain = %chain, "withdrawals resume: the chain's nodes are healthy again")
            }
            node_health::Transition::Unchanged => {}
        }
        Ok(())
    }

    /// The ops event and the webhook alert for a verdict change.
    fn alert(
        &self,
        t: node_health::Transition,
        previous: Option<&HealthCheckRow>,
        chain: &str,
        reasons: &[HaltReason],
        now: i64,
    ) -> HealthAlert {
        let halted = t == node_health::Transition::Halted;
        let (event, kind, subject) = if halted {
            ("nodes_halted", "node_halt", format!("kinko: withdrawals halted on {chain}: node monitor (C6, C10)"))
        } else {
            ("nodes_resumed", "node_resume", format!("kinko: withdrawals resumed on {chain}: nodes healthy again"))
        };
        let halted_since_ms = previous.filter(|p| !p.healthy).map(|p| p.since_ms);
        let detail = serde_json::json!({
            "chain": chain,
            "reasons": reasons,
            "halted_since_ms": halted_since_ms,
        });
        let mut body: String = if halted {
            "Withdrawals on this chain are halted: nothing is signed or sent until the nodes are healthy again.\n"
                .into()
        } else {
            "The chain's nodes are healthy again; queued withdrawals proceed.\n".into()
        };
        for r in reasons {
            body.push_str(&format!("- {r}\n"));
        }
        HealthAlert {
            event: Some(NewOpsEvent {
                operator_id: MONITOR_ACTOR.into(),
                terminal: self.targets.instance_id.clone(),
                event: event.into(),
                request_id: None,
                detail_json: detail.to_string(),
                at_ms: now,
            }),
            notice: Some(
                NewNotice::webhook(
                    None,
                    self.config.alert_recipient.clone(),
                    kind,
                    format!("{}:{now}", nodes_component(chain)),
                    subject,
                    body,
                    now,
                )
                .with_payload(detail),
            ),
        }
    }

    /// The signer's seal: in-process (unsealed while this runs) or asked over its socket; an unreachable
    /// signer counts as sealed. A change is recorded with an ops event and an alert, once.
    async fn check_signer(&mut self, now: i64) {
        let sealed = match &self.targets.signer_socket {
            None => Ok(false),
            Some(path) => {
                let remote = kinko_signer::remote::RemoteSigner::new(path);
                match tokio::time::timeout(SIGNER_STATUS_TIMEOUT, remote.status()).await {
                    Ok(Ok(s)) => Ok(s.sealed),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                }
            }
        };
        let reasons = match &sealed {
            Ok(true) => serde_json::json!([{"kind": "sealed"}]),
            Ok(false) => serde_json::json!([]),
            Err(e) => serde_json::json!([{"kind": "unreachable", "error": e}]),
        };
        let healthy = matches!(sealed, Ok(false));
        if let Some(m) = &self.metrics {
            m.set_gauge("kinko_signer_sealed", &[], if healthy { 0.0 } else { 1.0 });
            m.set_gauge("kinko_signer_reachable", &[], if sealed.is_ok() { 1.0 } else { 0.0 });
        }
        let reasons_json = reasons.to_string();
        let check = NewHealthCheck {
            component: SIGNER_COMPONENT,
            healthy,
            reasons_json: &reasons_json,
            checked_by: &self.targets.instance_id,
            now_ms: now,
            valid_until_ms: now.saturating_add(node_health::stale_after_ms(self.config.poll_interval_ms) as i64),
        };
        let instance = self.targets.instance_id.clone();
        let recipient = self.config.alert_recipient.clone();
        let result = self
            .store
            .record_health_check(&check, |t, _| {
                let (event, subject) = if t == node_health::Transition::Halted {
                    ("signer_sealed", "kinko: the signer is sealed or unreachable: nothing can be signed")
                } else {
                    ("signer_unsealed", "kinko: the signer is unsealed and answering again")
                };
                let detail = serde_json::json!({ "reasons": reasons });
                HealthAlert {
                    event: Some(NewOpsEvent {
                        operator_id: MONITOR_ACTOR.into(),
                        terminal: instance,
                        event: event.into(),
                        request_id: None,
                        detail_json: detail.to_string(),
                        at_ms: now,
                    }),
                    notice: Some(
                        NewNotice::webhook(None, recipient, event, format!("signer:{now}"), subject, subject, now)
                            .with_payload(detail),
                    ),
                }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the signer's seal state");
        }
    }

    /// Prometheus gauges. Best effort: a failed read leaves the previous value and logs.
    async fn export_metrics(&mut self, health: &Health, observations: &[NodeObservation]) {
        let Some(m) = self.metrics.clone() else { return };
        let chain = self.targets.chain.clone();
        m.set_gauge("kinko_nodes_halted", &[("chain", chain.clone())], if health.is_healthy() { 0.0 } else { 1.0 });
        let mut read_head = None;
        for o in observations {
            let labels = [("chain", chain.clone()), ("node", o.node.clone())];
            match &o.status {
                NodeStatus::Answered { head, .. } => {
                    m.set_gauge("kinko_node_up", &labels, 1.0);
                    m.set_gauge("kinko_node_head_block", &labels, *head as f64);
                    if o.node == "read" {
                        read_head = Some(*head);
                    }
                }
                NodeStatus::Unreachable { .. } => m.set_gauge("kinko_node_up", &labels, 0.0),
            }
        }
        match self.store.scanned_height(&chain).await {
            Ok(Some(scanned)) => {
                if let Some(head) = read_head {
                    m.set_gauge(
                        "kinko_watcher_lag_blocks",
                        &[("chain", chain.clone())],
                        head.saturating_sub(scanned) as f64,
                    );
                }
                m.set_gauge("kinko_watcher_scanned_block", &[("chain", chain.clone())], scanned as f64);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "metrics: scanned height unavailable"),
        }
        match self.store.withdrawal_counts_by_status().await {
            Ok(counts) => {
                let now: BTreeMap<String, i64> = counts.into_iter().collect();
                self.statuses_seen.extend(now.keys().cloned());
                // A status that emptied must read 0, not its last count.
                for status in &self.statuses_seen {
                    let n = now.get(status).copied().unwrap_or(0);
                    m.set_gauge("kinko_withdrawals", &[("status", status.clone())], n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: withdrawal counts unavailable"),
        }
        let asset = self.targets.asset.to_string();
        let wallet_labels = [("chain", chain.clone()), ("asset", asset)];
        if let Ok(address) = kinko_chain::evm::address::parse_address(&self.targets.hot_wallet)
            && let Some(read) = self.nodes.first()
        {
            match read.rpc.balance(address).await {
                // Prometheus values are floats: the gauge is for dashboards and alerts, never for accounting.
                Ok(wei) => m.set_gauge("kinko_hot_wallet_balance_wei", &wallet_labels, wei as f64),
                Err(e) => tracing::warn!(error = %e, "metrics: hot-wallet balance unavailable"),
            }
        }
        if let Some(cap) = self.config.hot_wallet_cap {
            m.set_gauge("kinko_hot_wallet_cap_wei", &wallet_labels, cap.base_units() as f64);
        }
        match self.store.current_maintenance_window(now_ms()).await {
            Ok(w) => m.set_gauge("kinko_maintenance_active", &[], if w.is_some() { 1.0 } else { 0.0 }),
            Err(e) => tracing::warn!(error = %e, "metrics: maintenance state unavailable"),
        }
        match self.store.active_freezes().await {
            Ok(f) => m.set_gauge("kinko_freezes_active", &[], f.len() as f64),
            Err(e) => tracing::warn!(error = %e, "metrics: freezes unavailable"),
        }
    }
}

/// A node's head and head hash; on the first contact also its chain id (C3).
async fn head_of(rpc: &EvmRpc, check_chain: bool, chain_id: u64) -> Result<(u64, [u8; 32]), String> {
    if check_chain {
        let actual = rpc.chain_id().await.map_err(|e| e.to_string())?;
        if actual != chain_id {
            return Err(format!("reports chain id {actual}, kinko is configured for {chain_id}"));
        }
    }
    let head = rpc.block_number().await.map_err(|e| e.to_string())?;
    let hash = rpc
        .block_hash(head)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("has no block at its own head {head}"))?;
    Ok((head, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: &crate::Config) -> &'static str {
        match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    /// C6, C7: an existing `[ethereum]` section without the new keys loads with the production defaults; the
    /// dev config turns the stall rule off; bad values are refused naming the field, never quoting a URL.
    #[test]
    fn c6_c7_monitor_config_defaults_and_validation_name_the_field() {
        let eth: EthereumConfig = toml::from_str("rpc_url = \"http://127.0.0.1:8545\"\nchain_id = 1\n").unwrap();
        assert_eq!(eth.monitor, NodeMonitorConfig::default());
        assert_eq!((eth.monitor.stall_after_ms, eth.monitor.lag_blocks_max), (180_000, 5));
        assert!(eth.cross_check_rpc_urls.is_empty() && eth.send_rpc_url.is_none());

        let mut c = crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://n:1".into());
        assert_eq!(c.ethereum.monitor.stall_after_ms, 0, "anvil mines on demand");
        c.validate().unwrap();
        c.ethereum.cross_check_rpc_urls = vec!["ftp://secret-key@node".into()];
        assert_eq!(field_of(&c), "ethereum.cross_check_rpc_urls");
        assert!(!c.validate().unwrap_err().to_string().contains("secret-key"), "the URL is not quoted");
        c.ethereum.cross_check_rpc_urls = vec!["http://n:1".into()];
        assert_eq!(field_of(&c), "ethereum.cross_check_rpc_urls", "rpc_url checking itself");
        c.ethereum.cross_check_rpc_urls = vec!["http://other:1".into(); CROSS_CHECK_NODES_MAX + 1];
        assert_eq!(field_of(&c), "ethereum.cross_check_rpc_urls");
        c.ethereum.cross_check_rpc_urls = vec!["http://other:1".into()];
        c.validate().unwrap();
        c.ethereum.monitor.stall_after_ms = 10;
        assert_eq!(field_of(&c), "ethereum.monitor.stall_after_ms", "shorter than a poll");
        c.ethereum.monitor.stall_after_ms = 0;
        c.ethereum.monitor.poll_interval_ms = 0;
        assert_eq!(field_of(&c), "ethereum.monitor.poll_interval_ms");
        c.ethereum.monitor.poll_interval_ms = 2_000;
        c.ethereum.monitor.alert_recipient = "two words".into();
        assert_eq!(field_of(&c), "ethereum.monitor.alert_recipient");
    }
}
