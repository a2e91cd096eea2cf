//! Bitcoin Core JSON-RPC client (M5 data acquisition, M9b sending, C4 fees and stuck transactions, C5 wtxid).
//!
//! This is the production client: it speaks Bitcoin Core's JSON-RPC 1.0 dialect
//! (`{"jsonrpc":"1.0","id":..,"method":..,"params":[..]}`) over HTTP with optional basic auth. The tests run it
//! against [`super::regtest_sim::RegtestSimulator`], never against a fake of this client.
//!
//! Trust model: the node's JSON is input. Blocks are taken from verbosity 2 for their place in the chain
//! (hash, height, previous hash) but every transaction is decoded from its raw `hex` with rust-bitcoin's
//! consensus decoding, its txid and wtxid are checked against the JSON, the header is rebuilt and must hash to
//! the claimed block hash, and the merkle root must commit to the decoded transactions. JSON amounts inside
//! transactions are never read. The few amounts the client does read (fee estimates, mempool fees) are parsed
//! from the JSON number's decimal text, never through `f64`.
//!
//! Every call is bounded by [`RPC_TIMEOUT`] and [`MAX_RESPONSE_BYTES`]. Errors name the RPC method and carry
//! Core's error code and message, or the field that was malformed; they never carry the URL or credentials.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, BlockHash, CompactTarget, Denomination, Transaction, TxMerkleNode, Txid, Wtxid};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Upper bound on one JSON-RPC round trip, body included. A verbosity-2 block of a full 4 MWU block can take
/// Core a few seconds to render; a hung node must stall one watcher cycle, not the watcher forever.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one response body. A full block at verbosity 2 (each transaction's hex plus its decoded
/// JSON) is tens of MB; 256 MiB leaves room for that and stops a hostile or broken endpoint from exhausting
/// memory.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Most transactions one block can hold: 4,000,000 weight units over the smallest possible transaction
/// (60 bytes without witness = 240 WU) is 16,666. A larger list is malformed, not a block.
pub const MAX_BLOCK_TXS: usize = 16_667;
/// Most txids accepted from `getrawmempool`: Core's default 300 MB mempool holds well under a million.
pub const MAX_MEMPOOL_TXIDS: usize = 1_000_000;

/// Bitcoin Core's RPC error codes (src/rpc/protocol.h) that callers and the simulator act on.
pub mod codes {
    /// Unspecified problem.
    pub const RPC_MISC_ERROR: i64 = -1;
    /// Invalid address or key; also "Block not found" and "Transaction not in mempool".
    pub const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
    /// Invalid, missing or duplicate parameter (e.g. "Block height out of range").
    pub const RPC_INVALID_PARAMETER: i64 = -8;
    /// Error parsing or validating structure in raw format ("TX decode failed").
    pub const RPC_DESERIALIZATION_ERROR: i64 = -22;
    /// General error during transaction or block submission; also missing or spent inputs.
    pub const RPC_VERIFY_ERROR: i64 = -25;
    /// Transaction or block was rejected by network rules.
    pub const RPC_VERIFY_REJECTED: i64 = -26;
    /// Transaction already in chain.
    pub const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
    /// Standard JSON-RPC 2.0 errors Core also uses.
    pub const RPC_INVALID_REQUEST: i64 = -32600;
    pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
    pub const RPC_PARSE_ERROR: i64 = -32700;
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("bitcoin RPC URL is invalid: {0}")]
    BadUrl(String),
    #[error("{method}: timed out after {}s", RPC_TIMEOUT.as_secs())]
    Timeout { method: &'static str },
    #[error("{method}: transport failure: {message}")]
    Transport { method: &'static str, message: String },
    #[error("{method}: HTTP status {status} without a JSON-RPC error")]
    HttpStatus { method: &'static str, status: u16 },
    #[error("{method}: response body exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { method: &'static str },
    /// Core answered with an error object: its code (see [`codes`]) and message.
    #[error("{method}: node error {code}: {message}")]
    Node { method: &'static str, code: i64, message: String },
    /// The response parsed as JSON-RPC but a field is missing, of the wrong type, or inconsistent.
    #[error("{method}: malformed response: field `{field}`: {reason}")]
    Malformed { method: &'static str, field: String, reason: String },
}

impl RpcError {
    /// Core's error code, when the node answered with one.
    pub fn node_code(&self) -> Option<i64> {
        match self {
            RpcError::Node { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn malformed(method: &'static str, field: impl Into<String>, reason: impl Into<String>) -> RpcError {
    RpcError::Malformed { method, field: field.into(), reason: reason.into() }
}

/// Basic-auth credentials of Core's `rpcuser`/`rpcpassword` (or an `rpcauth` entry). The password stays in a
/// [`SecretString`]: it is redacted from `Debug` and zeroized on drop.
#[derive(Clone, Debug)]
pub struct BtcRpcAuth {
    pub user: String,
    pub password: SecretString,
}

/// A block read through `getblock` verbosity 2 and checked as described in the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcBlock {
    pub hash: BlockHash,
    pub height: u64,
    /// `None` only for the genesis block.
    pub prev_hash: Option<BlockHash>,
    pub header: Header,
    /// Confirmations as Core reports them; -1 when the block is not on the node's active chain.
    pub confirmations: i64,
    /// Every transaction, decoded from its raw bytes, coinbase first.
    pub txs: Vec<Transaction>,
}

/// A header read through `getblockheader` (verbose), rebuilt and checked to hash to `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcBlockHeader {
    pub hash: BlockHash,
    pub height: u64,
    pub prev_hash: Option<BlockHash>,
    pub header: Header,
    /// -1 when the block is not on the node's active chain (it was re-orged out).
    pub confirmations: i64,
}

/// `estimatesmartfee`'s answer. Core reports BTC per 1000 virtual bytes; this keeps that exactly, in satoshi.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartFeeEstimate {
    /// `None` when Core has no estimate yet (then `errors` says why).
    pub fee_rate_sat_per_kvb: Option<u64>,
    /// The confirmation target the estimate is for (Core may answer for a different one than asked).
    pub blocks: u32,
    pub errors: Vec<String>,
}

impl SmartFeeEstimate {
    /// The estimate in sat/vB, rounded UP: paying a fraction of a satoshi per vbyte more is harmless, paying
    /// less can leave the transaction below the rate that was estimated to confirm.
    pub fn fee_rate_sat_per_vb_ceil(&self) -> Option<u64> {
        self.fee_rate_sat_per_kvb.map(|r| r.div_ceil(1000))
    }

    /// The estimate as rust-bitcoin's [`bitcoin::FeeRate`] (sat per 1000 weight units, 1 vB = 4 WU), rounded up.
    pub fn fee_rate(&self) -> Option<bitcoin::FeeRate> {
        self.fee_rate_sat_per_kvb.map(|r| bitcoin::FeeRate::from_sat_per_kwu(r.div_ceil(4)))
    }
}

/// `getmempoolentry`'s answer: what fee-bumping (C4) and malleability-proof tracking (C5) need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolEntry {
    pub txid: Txid,
    pub wtxid: Wtxid,
    pub vsize_vb: u64,
    pub weight_wu: u64,
    /// Entry time, seconds since the Unix epoch.
    pub time: u64,
    /// Block height when the transaction entered the mempool.
    pub height: u64,
    pub fee_base: Amount,
    pub fee_modified: Amount,
    pub fee_ancestor: Amount,
    pub fee_descendant: Amount,
    /// Whether this transaction could be replaced due to BIP125 (signalled by it or an unconfirmed ancestor).
    pub bip125_replaceable: bool,
    /// Unconfirmed parents in the mempool.
    pub depends: Vec<Txid>,
}

/// Client of one Bitcoin Core node.
#[derive(Debug)]
pub struct BtcRpc {
    http: reqwest::Client,
    url: reqwest::Url,
    auth: Option<BtcRpcAuth>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct ResponseEnvelope<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    id: Value,
}

impl BtcRpc {
    /// `url` is the node's RPC endpoint (e.g. `http://127.0.0.1:8332/`). Credentials go in `auth`, never in the
    /// URL: a URL ends up in logs and error messages, a [`SecretString`] does not.
    pub fn new(url: &str, auth: Option<BtcRpcAuth>) -> Result<Self, RpcError> {
        let url: reqwest::Url = url.parse().map_err(|e: url::ParseError| RpcError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RpcError::BadUrl("scheme must be http or https".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RpcError::BadUrl("credentials belong in the auth argument, not in the URL".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(RPC_TIMEOUT)
            // A redirect would resend the basic-auth header to wherever the endpoint points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RpcError::BadUrl(e.without_url().to_string()))?;
        Ok(Self { http, url, auth, next_id: AtomicU64::new(1) })
    }

    /// One JSON-RPC call; returns the raw `result` text (so that amounts can be parsed from their decimal text).
    async fn call_raw(&self, method: &'static str, params: Vec<Value>) -> Result<Box<RawValue>, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({ "jsonrpc": "1.0", "id": id, "method": method, "params": params });
        let mut request = self.http.post(self.url.clone()).json(&body);
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.user, Some(auth.password.expose_secret()));
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                RpcError::Timeout { method }
            } else {
                RpcError::Transport { method, message: e.without_url().to_string() }
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if response.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
            return Err(RpcError::TooLarge { method });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(RpcError::TooLarge { method });
            }
            bytes.extend_from_slice(&chunk);
        }
        // Core answers errors with HTTP 500 (404 for an unknown method) and a JSON-RPC error body; 401 and
        // proxies' errors have no JSON body at all.
        let envelope: ResponseEnvelope<'_> = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(e) if status.is_success() => return Err(malformed(method, "(body)", e.to_string())),
            Err(_) => return Err(RpcError::HttpStatus { method, status: status.as_u16() }),
        };
        if let Some(error) = envelope.error.filter(|e| !e.is_null()) {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(codes::RPC_MISC_ERROR);
            let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_owned();
            return Err(RpcError::Node { method, code, message });
        }
        if !status.is_success() {
            return Err(RpcError::HttpStatus { method, status: status.as_u16() });
        }
        if envelope.id.as_u64() != Some(id) {
            return Err(malformed(method, "id", format!("expected {id}, got {}", envelope.id)));
        }
        let result = envelope.result.ok_or_else(|| malformed(method, "result", "missing"))?;
        Ok(result.to_owned())
    }

    async fn call_value(&self, method: &'static str, params: Vec<Value>) -> Result<Value, RpcError> {
        let raw = self.call_raw(method, params).await?;
        serde_json::from_str(raw.get()).map_err(|e| malformed(method, "result", e.to_string()))
    }

    /// Height of the node's active chain tip.
    pub async fn get_block_count(&self) -> Result<u64, RpcError> {
        const METHOD: &str = "getblockcount";
        let v = self.call_value(METHOD, vec![]).await?;
        v.as_u64().ok_or_else(|| malformed(METHOD, "result", "not a non-negative integer"))
    }

    /// Hash of the active chain's block at `height`.
    pub async fn get_block_hash(&self, height: u64) -> Result<BlockHash, RpcError> {
        const METHOD: &str = "getblockhash";
        let v = self.call_value(METHOD, vec![height.into()]).await?;
        parse_hash(METHOD, "result", &v)
    }

    /// A full block, every transaction decoded from its raw bytes (see the module documentation).
    pub async fn get_block(&self, hash: &BlockHash) -> Result<BtcBlock, RpcError> {
        const METHOD: &str = "getblock";
        let v = self.call_value(METHOD, vec![hash.to_string().into(), 2.into()]).await?;
        parse_block(METHOD, hash, &v)
    }

    /// A block header (verbose form), rebuilt from its fields and checked against its hash.
    pub async fn get_block_header(&self, hash: &BlockHash) -> Result<BtcBlockHeader, RpcError> {
        const METHOD: &str = "getblockheader";
        let v = self.call_value(METHOD, vec![hash.to_string().into(), true.into()]).await?;
        let fields = HeaderFields::parse(METHOD, &v)?;
        if fields.hash != *hash {
            return Err(malformed(METHOD, "hash", format!("asked for {hash}, got {}", fields.hash)));
        }
        Ok(BtcBlockHeader {
            hash: fields.hash,
            height: fields.height,
            prev_hash: fields.prev_hash,
            header: fields.header,
            confirmations: fields.confirmations,
        })
    }

    /// Broadcasts a signed transaction. Returns its txid, checked against the one computed locally. Core
    /// answers with the txid also when the transaction is already in its mempool, so re-sending is harmless.
    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, RpcError> {
        const METHOD: &str = "sendrawtransaction";
        let v = self.call_value(METHOD, vec![encode::serialize_hex(tx).into()]).await?;
        let txid: Txid = parse_hash(METHOD, "result", &v)?;
        let expected = tx.compute_txid();
        if txid != expected {
            return Err(malformed(METHOD, "result", format!("node reports txid {txid}, transaction is {expected}")));
        }
        Ok(txid)
    }

    /// Fee rate estimate for confirmation within `conf_target_blocks` (Core accepts 1 to 1008).
    pub async fn estimate_smart_fee(&self, conf_target_blocks: u16) -> Result<SmartFeeEstimate, RpcError> {
        const METHOD: &str = "estimatesmartfee";
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow, default)]
            feerate: Option<&'a RawValue>,
            #[serde(default)]
            errors: Vec<String>,
            blocks: u32,
        }
        let raw = self.call_raw(METHOD, vec![conf_target_blocks.into()]).await?;
        let parsed: Raw<'_> =
            serde_json::from_str(raw.get()).map_err(|e| malformed(METHOD, "result", e.to_string()))?;
        let fee_rate_sat_per_kvb = match parsed.feerate {
            None => None,
            Some(text) => Some(parse_btc_text(METHOD, "feerate", text.get())?.to_sat()),
        };
        Ok(SmartFeeEstimate { fee_rate_sat_per_kvb, blocks: parsed.blocks, errors: parsed.errors })
    }

    /// The mempool entry of an unconfirmed transaction. Core answers code -5 when it is not in the mempool.
    pub async fn get_mempool_entry(&self, txid: &Txid) -> Result<MempoolEntry, RpcError> {
        const METHOD: &str = "getmempoolentry";
        #[derive(Deserialize)]
        struct Fees<'a> {
            #[serde(borrow)]
            base: &'a RawValue,
            #[serde(borrow)]
            modified: &'a RawValue,
            #[serde(borrow)]
            ancestor: &'a RawValue,
            #[serde(borrow)]
            descendant: &'a RawValue,
        }
        #[derive(Deserialize)]
        struct Raw<'a> {
            vsize: u64,
            weight: u64,
            time: u64,
            height: u64,
            wtxid: String,
            #[serde(borrow)]
            fees: Fees<'a>,
            #[serde(rename = "bip125-replaceable")]
            bip125_replaceable: bool,
            #[serde(default)]
            depends: Vec<String>,
        }
        let raw = self.call_raw(METHOD, vec![txid.to_string().into()]).await?;
        let r: Raw<'_> = serde_json::from_str(raw.get()).map_err(|e| malformed(METHOD, "result", e.to_string()))?;
        let wtxid = Wtxid::from_str(&r.wtxid).map_err(|e| malformed(METHOD, "wtxid", e.to_string()))?;
        let mut depends = Vec::with_capacity(r.depends.len());
        for (i, d) in r.depends.iter().enumerate() {
            depends.push(Txid::from_str(d).map_err(|e| malformed(METHOD, format!("depends[{i}]"), e.to_string()))?);
        }
        Ok(MempoolEntry {
            txid: *txid,
            wtxid,
            vsize_vb: r.vsize,
            weight_wu: r.weight,
            time: r.time,
            height: r.height,
            fee_base: parse_btc_text(METHOD, "fees.base", r.fees.base.get())?,
            fee_modified: parse_btc_text(METHOD, "fees.modified", r.fees.modified.get())?,
            fee_ancestor: parse_btc_text(METHOD, "fees.ancestor", r.fees.ancestor.get())?,
            fee_descendant: parse_btc_text(METHOD, "fees.descendant", r.fees.descendant.get())?,
            bip125_replaceable: r.bip125_replaceable,
            depends,
        })
    }

    /// Txids in the node's mempool.
    pub async fn get_raw_mempool(&self) -> Result<Vec<Txid>, RpcError> {
        const METHOD: &str = "getrawmempool";
        let v = self.call_value(METHOD, vec![false.into()]).await?;
        let list = v.as_array().ok_or_else(|| malformed(METHOD, "result", "not an array"))?;
        if list.len() > MAX_MEMPOOL_TXIDS {
            return Err(malformed(METHOD, "result", format!("{} txids", list.len())));
        }
        list.iter().enumerate().map(|(i, t)| parse_hash(METHOD, &format!("result[{i}]"), t)).collect()
    }
}

/// Checks and decodes a verbosity-2 `getblock` result (see the module documentation).
fn parse_block(method: &'static str, hash: &BlockHash, v: &Value) -> Result<BtcBlock, RpcError> {
    let fields = HeaderFields::parse(method, v)?;
    if fields.hash != *hash {
        return Err(malformed(method, "hash", format!("asked for {hash}, got {}", fields.hash)));
    }
    let tx_list = v.get("tx").and_then(Value::as_array).ok_or_else(|| malformed(method, "tx", "missing array"))?;
    if tx_list.is_empty() || tx_list.len() > MAX_BLOCK_TXS {
        return Err(malformed(method, "tx", format!("{} transactions", tx_list.len())));
    }
    let mut txs = Vec::with_capacity(tx_list.len());
    for (i, entry) in tx_list.iter().enumerate() {
        txs.push(decode_tx_entry(method, i, entry)?);
    }
    if !txs[0].is_coinbase() {
        return Err(malformed(method, "tx[0]", "first transaction is not a coinbase"));
    }
    let block = bitcoin::Block { header: fields.header, txdata: txs };
    if !block.check_merkle_root() {
        return Err(malformed(method, "merkleroot", "does not commit to the decoded transactions"));
    }
    Ok(BtcBlock {
        hash: fields.hash,
        height: fields.height,
        prev_hash: fields.prev_hash,
        header: block.header,
        confirmations: fields.confirmations,
        txs: block.txdata,
    })
}

/// Parses an amount Core printed as a JSON number in BTC (e.g. `0.00001000`) from its decimal text, exactly.
/// Core prints amounts in fixed notation with at most 8 decimals; exponent notation, a sign or more decimals
/// are refused rather than rounded.
pub fn parse_btc_text(method: &'static str, field: &str, text: &str) -> Result<Amount, RpcError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(malformed(method, field, format!("`{text}` is not a plain decimal BTC amount")));
    }
    Amount::from_str_in(text, Denomination::Bitcoin).map_err(|e| malformed(method, field, format!("`{text}`: {e}")))
}

fn parse_hash<H: FromStr>(method: &'static str, field: &str, v: &Value) -> Result<H, RpcError>
where
    H::Err: std::fmt::Display,
{
    let s = v.as_str().ok_or_else(|| malformed(method, field, "not a string"))?;
    H::from_str(s).map_err(|e| malformed(method, field, e.to_string()))
}

fn field_u64(method: &'static str, v: &Value, field: &str) -> Result<u64, RpcError> {
    v.get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed(method, field, "missing or not a non-negative integer"))
}

fn field_u32(method: &'static str, v: &Value, field: &str) -> Result<u32, RpcError> {
    u32::try_from(field_u64(method, v, field)?).map_err(|_| malformed(method, field, "exceeds u32"))
}

/// The header fields shared by `getblock` and `getblockheader`, with the header rebuilt and checked.
struct HeaderFields {
    hash: BlockHash,
    height: u64,
    prev_hash: Option<BlockHash>,
    confirmations: i64,
    header: Header,
}

impl HeaderFields {
    fn parse(method: &'static str, v: &Value) -> Result<Self, RpcError> {
        let hash: BlockHash = parse_hash(method, "hash", v.get("hash").unwrap_or(&Value::Null))?;
        let height = field_u64(method, v, "height")?;
        let prev_hash: Option<BlockHash> = match v.get("previousblockhash") {
            None => None,
            Some(p) => Some(parse_hash(method, "previousblockhash", p)?),
        };
        if prev_hash.is_none() != (height == 0) {
            return Err(malformed(method, "previousblockhash", "present exactly when height is not 0"));
        }
        let confirmations = v
            .get("confirmations")
            .and_then(Value::as_i64)
            .ok_or_else(|| malformed(method, "confirmations", "missing or not an integer"))?;
        let version = v
            .get("version")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| malformed(method, "version", "missing or not an i32"))?;
        let merkle_root: TxMerkleNode = parse_hash(method, "merkleroot", v.get("merkleroot").unwrap_or(&Value::Null))?;
        let bits_text =
            v.get("bits").and_then(Value::as_str).ok_or_else(|| malformed(method, "bits", "not a string"))?;
        let bits = u32::from_str_radix(bits_text, 16).map_err(|e| malformed(method, "bits", e.to_string()))?;
        let header = Header {
            version: BlockVersion::from_consensus(version),
            // The genesis block's previous hash is all zeros on the wire.
            prev_blockhash: prev_hash.unwrap_or_else(BlockHash::all_zeros),
            merkle_root,
            time: field_u32(method, v, "time")?,
            bits: CompactTarget::from_consensus(bits),
            nonce: field_u32(method, v, "nonce")?,
        };
        if header.block_hash() != hash {
            return Err(malformed(method, "hash", "the header fields do not hash to it"));
        }
        Ok(Self { hash, height, prev_hash, confirmations, header })
    }
}

/// Decodes one verbosity-2 transaction from its `hex` and checks its `txid` and `hash` (wtxid).
fn decode_tx_entry(method: &'static str, i: usize, entry: &Value) -> Result<Transaction, RpcError> {
    let hex =
        entry.get("hex").and_then(Value::as_str).ok_or_else(|| malformed(method, format!("tx[{i}].hex"), "missing"))?;
    let tx: Transaction =
        encode::deserialize_hex(hex).map_err(|e| malformed(method, format!("tx[{i}].hex"), e.to_string()))?;
    let txid: Txid = parse_hash(method, &format!("tx[{i}].txid"), entry.get("txid").unwrap_or(&Value::Null))?;
    if txid != tx.compute_txid() {
        return Err(malformed(method, format!("tx[{i}].txid"), "does not match the decoded transaction"));
    }
    if let Some(w) = entry.get("hash") {
        let wtxid: Wtxid = parse_hash(method, &format!("tx[{i}].hash"), w)?;
        if wtxid != tx.compute_wtxid() {
            return Err(malformed(method, format!("tx[{i}].hash"), "wtxid does not match the decoded transaction"));
        }
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c4_btc_fee_rate_text_parses_exactly() {
        // 0.00001000 BTC/kvB = 1000 sat/kvB = 1 sat/vB; 0.00001001 would round in f64 * 1e8 arithmetic paths.
        assert_eq!(parse_btc_text("t", "f", "0.00001000").unwrap().to_sat(), 1000);
        assert_eq!(parse_btc_text("t", "f", "0.00001001").unwrap().to_sat(), 1001);
        assert_eq!(parse_btc_text("t", "f", "20999999.99999999").unwrap().to_sat(), 2_099_999_999_999_999);
        assert!(parse_btc_text("t", "f", "1e-05").is_err());
        assert!(parse_btc_text("t", "f", "-0.1").is_err());
        assert!(parse_btc_text("t", "f", "0.000000001").is_err());
        let est = SmartFeeEstimate { fee_rate_sat_per_kvb: Some(1001), blocks: 2, errors: vec![] };
        assert_eq!(est.fee_rate_sat_per_vb_ceil(), Some(2));
    }

    /// Core's verbosity-2 JSON of the real regtest genesis block (the fields the client reads).
    fn genesis_json() -> (BlockHash, Value) {
        let block = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        let tx = &block.txdata[0];
        let json = serde_json::json!({
            "hash": block.block_hash().to_string(), "confirmations": 1, "height": 0,
            "version": block.header.version.to_consensus(), "merkleroot": block.header.merkle_root.to_string(),
            "time": block.header.time, "nonce": block.header.nonce,
            "bits": format!("{:08x}", block.header.bits.to_consensus()),
            "tx": [{ "txid": tx.compute_txid().to_string(), "hash": tx.compute_wtxid().to_string(),
                     "hex": encode::serialize_hex(tx) }],
        });
        (block.block_hash(), json)
    }

    fn malformed_field(r: Result<BtcBlock, RpcError>) -> String {
        match r {
            Err(RpcError::Malformed { field, .. }) => field,
            other => panic!("expected a malformed-field error, got {other:?}"),
        }
    }

    #[test]
    fn m5_btc_rpc_checks_block_json_against_the_decoded_bytes() {
        let (hash, json) = genesis_json();
        let block = parse_block("getblock", &hash, &json).unwrap();
        assert_eq!((block.height, block.prev_hash, block.txs.len()), (0, None, 1));

        let mut wrong_txid = json.clone();
        wrong_txid["tx"][0]["txid"] = Value::from(BlockHash::all_zeros().to_string());
        assert_eq!(malformed_field(parse_block("getblock", &hash, &wrong_txid)), "tx[0].txid");
        let mut wrong_nonce = json.clone();
        wrong_nonce["nonce"] = Value::from(7);
        assert_eq!(malformed_field(parse_block("getblock", &hash, &wrong_nonce)), "hash");
        let mut bad_hex = json.clone();
        bad_hex["tx"][0]["hex"] = Value::from("00");
        assert_eq!(malformed_field(parse_block("getblock", &hash, &bad_hex)), "tx[0].hex");
        let mut no_tx = json.clone();
        no_tx["tx"] = serde_json::json!([]);
        assert_eq!(malformed_field(parse_block("getblock", &hash, &no_tx)), "tx");
        let mut orphan = json.clone();
        orphan["previousblockhash"] = Value::from(hash.to_string());
        assert_eq!(malformed_field(parse_block("getblock", &hash, &orphan)), "previousblockhash");
        let other = BlockHash::all_zeros();
        assert_eq!(malformed_field(parse_block("getblock", &other, &json)), "hash");
    }

    #[test]
    fn m5_btc_rpc_refuses_credentials_in_the_url() {
        assert!(matches!(BtcRpc::new("http://u:p@127.0.0.1:1/", None), Err(RpcError::BadUrl(_))));
        assert!(matches!(BtcRpc::new("ftp://127.0.0.1:1/", None), Err(RpcError::BadUrl(_))));
    }
}
