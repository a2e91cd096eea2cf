//! Node monitoring end to end (C6, C7, C10) on real anvil nodes, with kinko running in process over the
//! HTTP API, the pipeline and the signer: two nodes that disagree at the confirmation depth halt
//! withdrawals (an approved one is neither signed nor sent; one ops event and one webhook alert); when they
//! agree again withdrawals resume and settle. A stalled node, a lagging node and an unreachable node halt
//! too. The metrics carry the monitor's series.
//!
//! How the two nodes are made to agree and disagree, deterministically: node B is started with
//! `--fork-url` A, so both serve the same history up to B's fork point. Mining on B (a block with a transfer
//! A never sees) and on A gives them different blocks above it: once those are at the confirmation depth
//! they disagree there. `anvil_reset` of B forking A at A's head makes B serve A's history again: they
//! agree. B never follows A by itself, so lag is tested on its own and set out of the way elsewhere.

mod support;

use std::time::Duration;

use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1, Anvil};
use serde_json::{Value, json};
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn status(h: &Harness) -> Value {
    reqwest::get(format!("{}/v1/status", h.api_base())).await.unwrap().json().await.unwrap()
}

async fn wait_halted(h: &Harness, halted: bool, what: &str) {
    wait_for(what, TIMEOUT, None, || async { (status(h).await["withdrawals_halted"] == halted).then_some(()) }).await;
}

/// The monitor's ops events, oldest first: (event, detail).
async fn monitor_events(h: &Harness) -> Vec<(String, String)> {
    let rows = h.ts.store.ops_events(None, 1_000).await.unwrap();
    rows.into_iter()
        .filter(|e| e.operator_id == kinko_server::node_monitor::MONITOR_ACTOR && e.event.starts_with("nodes_"))
        .map(|e| (e.event, e.detail_json))
        .collect()
}

async fn alerts(h: &Harness, kind: &str) -> i64 {
    kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM notices WHERE kind = $1 AND channel = 'webhook'")
        .bind(kind)
        .fetch_one(h.ts.store.pool())
        .await
        .unwrap()
}

fn fast_monitor(h: &mut Harness) {
    h.config.ethereum.monitor.poll_interval_ms = 100;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_c10_disagreeing_nodes_halt_withdrawals_and_agreeing_again_resumes_them() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let mut h = Harness::new(ts, &[], 3, 30_000).await;
        let b = Anvil::spawn(&["--fork-url", h.anvil.url()]).await.expect("start the cross-check node");
        h.config.ethereum.cross_check_rpc_urls = vec![b.url().to_string()];
        fast_monitor(&mut h);
        // B is a fork frozen where it started and never follows A: lag is another test's subject.
        h.config.ethereum.monitor.lag_blocks_max = 100_000;
        let running = h.start_in_process().await;
        wait_halted(&h, false, "a first healthy verdict").await;
        let c = Customer::register(&h.api_base(), "nina@example.com", &h.mail_dir()).await;
        h.anvil.send_eth(ACCOUNT1, &c.deposit_address, 2 * ETH).await.unwrap();
        wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
            (c.available().await == 2 * ETH).then_some(())
        })
        .await;
        assert!(monitor_events(&h).await.is_empty(), "{backend}: healthy so far");

        // Disagree: B mines its own blocks past the confirmation depth (the first holds a transfer A never
        // sees), while A has its own blocks at those heights.
        b.send_eth(ACCOUNT0, ACCOUNT1, 1).await.unwrap();
        b.mine(4).await.unwrap();
        h.anvil.mine(1).await.unwrap();
        wait_halted(&h, true, "the halt").await;
        let events = monitor_events(&h).await;
        assert_eq!(events.len(), 1, "{backend}: {events:?}");
        assert_eq!(events[0].0, "nodes_halted");
        assert!(events[0].1.contains("\"kind\":\"disagree\""), "{backend}: {}", events[0].1);

        // An approved withdrawal requested during the halt is accepted and queued, never signed or sent.
        let nonce_before = h.nonce_of(&h.hot_wallet).await;
        let dest = outside_address(&format!("{backend}-monitor-dest"));
        let (code, body) = c.withdraw("w-halt", ETH / 2, &dest).await.unwrap();
        assert_eq!(code, 202, "{backend}: {body}");
        let id = body["id"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.unwrap();
        assert_eq!(w["status"], "approved", "{backend}: nothing moves while halted: {w}");
        assert!(w["tx_hash"].is_null(), "{backend}: not signed: {w}");
        assert_eq!(h.nonce_of(&h.hot_wallet).await, nonce_before, "{backend}: nothing sent");
        assert_eq!(monitor_events(&h).await.len(), 1, "{backend}: one event per halt, not per poll");
        assert_eq!(alerts(&h, "node_halt").await, 1, "{backend}: one webhook alert per halt");
        let metrics = reqwest::get(format!("{}/metrics", h.api_base())).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("kinko_nodes_halted{chain=\"eth\"} 1"), "{backend}: {metrics}");

        // Agree again: B serves A's chain once more. Withdrawals resume by themselves and settle.
        b.rpc("anvil_reset", json!([{"forking": {"jsonRpcUrl": h.anvil.url()}}])).await.unwrap();
        wait_halted(&h, false, "the resume").await;
        let w = wait_for("settlement after the resume", TIMEOUT, Some(&h.anvil), || async {
            let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
            (w["status"] == "settled").then_some(w)
        })
        .await;
        assert!(w["tx_hash"].is_string(), "{backend}: {w}");
        assert_eq!(h.balance_of(&dest).await, ETH / 2, "{backend}: paid once");
        let events: Vec<String> = monitor_events(&h).await.into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, ["nodes_halted", "nodes_resumed"], "{backend}");
        assert_eq!(alerts(&h, "node_resume").await, 1, "{backend}");

        // The metrics carry the monitor's series (refreshed each poll: give it one).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let metrics = reqwest::get(format!("{}/metrics", h.api_base())).await.unwrap().text().await.unwrap();
        for series in [
            "kinko_nodes_halted{chain=\"eth\"} 0",
            "kinko_node_up{chain=\"eth\",node=\"cross-check-1\"} 1",
            "kinko_node_head_block{chain=\"eth\",node=\"read\"}",
            "kinko_watcher_lag_blocks{chain=\"eth\"}",
            "kinko_withdrawals{status=\"settled\"} 1",
            "kinko_hot_wallet_balance_wei{chain=\"eth\",asset=\"ETH\"}",
            "kinko_signer_sealed 0",
        ] {
            assert!(metrics.contains(series), "{backend}: {series} missing from\n{metrics}");
        }
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_c10_a_stalled_node_halts_after_stall_after_ms_and_a_new_block_resumes() {
    let ts = kinko_store::testing::sqlite_store().await;
    let mut h = Harness::new(ts, &["--no-mining"], 2, 30_000).await;
    fast_monitor(&mut h);
    h.config.ethereum.monitor.stall_after_ms = 1_500;
    let running = h.start_in_process().await;
    // Before the first verdict the status says halted too (fail closed): wait for the event itself.
    let events = wait_for("the stall halt", TIMEOUT, None, || async {
        let events = monitor_events(&h).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(status(&h).await["withdrawals_halted"], true);
    assert_eq!(events[0].0, "nodes_halted", "{events:?}");
    assert!(events[0].1.contains("\"kind\":\"stalled\""), "{}", events[0].1);
    h.anvil.mine(1).await.unwrap();
    wait_for("the resume", TIMEOUT, None, || async {
        monitor_events(&h).await.iter().any(|(e, _)| e == "nodes_resumed").then_some(())
    })
    .await;
    assert!(alerts(&h, "node_halt").await >= 1 && alerts(&h, "node_resume").await >= 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_lagging_then_an_unreachable_cross_check_node_halts_fail_closed() {
    let ts = kinko_store::testing::sqlite_store().await;
    let mut h = Harness::new(ts, &[], 3, 30_000).await;
    let b = Anvil::spawn(&["--fork-url", h.anvil.url()]).await.expect("start the cross-check node");
    h.config.ethereum.cross_check_rpc_urls = vec![b.url().to_string()];
    fast_monitor(&mut h);
    h.config.ethereum.monitor.lag_blocks_max = 2;
    let running = h.start_in_process().await;
    wait_halted(&h, false, "a first healthy verdict").await;

    h.anvil.mine(3).await.unwrap();
    wait_halted(&h, true, "the lag halt").await;
    let events = monitor_events(&h).await;
    assert!(events[0].1.contains("\"kind\":\"lagging\""), "{events:?}");

    b.rpc("anvil_reset", json!([{"forking": {"jsonRpcUrl": h.anvil.url()}}])).await.unwrap();
    wait_halted(&h, false, "the resume once caught up").await;

    drop(b);
    wait_halted(&h, true, "the halt on an unreachable node").await;
    let events = monitor_events(&h).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["nodes_halted", "nodes_resumed", "nodes_halted"]);
    assert!(events[2].1.contains("\"kind\":\"unreachable\"") && events[2].1.contains("cross-check-1"), "{events:?}");
    assert!(!events[2].1.contains("127.0.0.1"), "node URLs stay out of alerts: {}", events[2].1);
    running.stop().await;
}
