//! A local anvil node for tests and `kinko dev`: spawned on a free port, killed on drop.
//!
//! What anvil 1.7's re-org tools do (checked by experiment, relied on by the deposit tests):
//! - `anvil_reorg [depth, txs]` keeps the height and replaces the last `depth` blocks (tip-depth+1 ..=
//!   tip) with new blocks of different hashes. The transactions in the replaced blocks are gone: not
//!   in the new blocks, not in the pool, no receipt, and the sender's nonce is back where it was. Txs
//!   listed in `txs` are put into the new blocks instead.
//! - `anvil_rollback [n]` removes the last `n` blocks: the height goes down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// anvil's first default account (unlocked, funded with 10,000 ETH).
pub const ACCOUNT0: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// anvil's second default account.
pub const ACCOUNT1: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
/// Where npm puts the binary, relative to the directory holding `node_modules`.
pub const ANVIL_NPM_PATH: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
/// How long to wait for a fresh anvil to answer.
pub const ANVIL_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one helper RPC call.
pub const ANVIL_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Anvil::mined_block`] waits for a sent transaction's receipt.
pub const MINED_WAIT: Duration = Duration::from_secs(30);

pub struct Anvil {
    child: Child,
    port: u16,
    url: String,
}

fn io_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// The anvil binary: `$KINKO_ANVIL`, else the npm install found by walking up from the current
/// directory or this crate's manifest directory.
pub fn find_anvil() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KINKO_ANVIL") {
        return Ok(PathBuf::from(p));
    }
    let starts = [std::env::current_dir().ok(), Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")))];
    for start in starts.into_iter().flatten() {
        let mut dir: Option<&Path> = Some(&start);
        while let Some(d) = dir {
            let candidate = d.join(ANVIL_NPM_PATH);
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "anvil not found: run `npm install` in the repository or set KINKO_ANVIL",
    ))
}

impl Anvil {
    /// Starts anvil on a free local port and waits until it answers.
    pub async fn spawn(extra_args: &[&str]) -> std::io::Result<Anvil> {
        let bin = find_anvil()?;
        // Another process may take the port between drop and anvil's bind; rare, and the readiness
        // check then fails loudly instead of talking to a stranger's node for long.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut anvil = Anvil { child, port, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + ANVIL_READY_TIMEOUT;
        loop {
            if let Ok(v) = anvil.rpc("eth_chainId", json!([])).await
                && v.is_string()
            {
                return Ok(anvil);
            }
            if let Some(status) = anvil.child.try_wait()? {
                return Err(io_err(format!("anvil exited early: {status}")));
            }
            if Instant::now() > deadline {
                return Err(io_err("anvil did not answer eth_chainId in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// One raw JSON-RPC call; returns `result` or the node's error as an io error.
    pub async fn rpc(&self, method: &str, params: Value) -> std::io::Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        let fut = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let req = format!(
                "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            s.write_all(req.as_bytes()).await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = tokio::time::timeout(ANVIL_RPC_TIMEOUT, fut)
            .await
            .map_err(|_| io_err(format!("{method}: timed out")))??;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) =
            text.split_once("\r\n\r\n").ok_or_else(|| io_err(format!("{method}: malformed HTTP response")))?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        let v: Value = serde_json::from_str(&body).map_err(|e| io_err(format!("{method}: bad JSON: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(io_err(format!("{method}: {err}")));
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    pub async fn mine(&self, blocks: u64) -> std::io::Result<()> {
        self.rpc("anvil_mine", json!([format!("{blocks:#x}")])).await.map(drop)
    }

    pub async fn set_automine(&self, on: bool) -> std::io::Result<()> {
        self.rpc("evm_setAutomine", json!([on])).await.map(drop)
    }

    /// Replaces the last `depth` blocks with empty ones (height unchanged).
    pub async fn reorg(&self, depth: u64) -> std::io::Result<()> {
        self.rpc("anvil_reorg", json!([depth, []])).await.map(drop)
    }

    /// Removes the last `blocks` blocks.
    pub async fn rollback(&self, blocks: u64) -> std::io::Result<()> {
        self.rpc("anvil_rollback", json!([blocks])).await.map(drop)
    }

    pub async fn block_number(&self) -> std::io::Result<u64> {
        let v = self.rpc("eth_blockNumber", json!([])).await?;
        v.as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| io_err(format!("eth_blockNumber: unexpected {v}")))
    }

    /// Sends value from an unlocked account; returns the tx hash (0x-hex).
    pub async fn send_eth(&self, from: &str, to: &str, value_wei: u128) -> std::io::Result<String> {
        let v = self
            .rpc("eth_sendTransaction", json!([{"from": from, "to": to, "value": format!("{value_wei:#x}")}]))
            .await?;
        v.as_str().map(str::to_string).ok_or_else(|| io_err(format!("eth_sendTransaction: unexpected {v}")))
    }

    /// The block that mined `tx_hash`, waiting up to [`MINED_WAIT`]. Anvil mines on arrival, but under load
    /// the hash comes back before the block is visible, so "the block number right after sending" is not
    /// the transaction's block: ask its receipt.
    pub async fn mined_block(&self, tx_hash: &str) -> std::io::Result<u64> {
        let deadline = std::time::Instant::now() + MINED_WAIT;
        loop {
            let receipt = self.rpc("eth_getTransactionReceipt", json!([tx_hash])).await?;
            if let Some(n) = receipt.get("blockNumber").and_then(|n| n.as_str()) {
                return u64::from_str_radix(n.trim_start_matches("0x"), 16)
                    .map_err(|e| io_err(format!("receipt blockNumber {n:?}: {e}")));
            }
            if std::time::Instant::now() >= deadline {
                return Err(io_err(format!("{tx_hash} was not mined within {MINED_WAIT:?}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
