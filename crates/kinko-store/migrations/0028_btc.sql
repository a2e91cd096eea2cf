-- Bitcoin (issue #9; M5, M6, C2, C5). `chain` is `btc:<network>` (e.g. `btc:regtest`), the same string the
-- deposit window (`chain_blocks`) and `deposits` rows of Bitcoin use. Hashes and txids are lower-case hex in
-- display order (as block explorers and Core's RPC print them).
--
-- btc_addresses: every address of the custodian's BIP84 account kinko has derived and watches for outputs —
-- customers' receive addresses (keychain 0, also in `deposit_addresses` for deposit crediting) and the
-- custodian's change addresses (keychain 1, customer_id NULL). Keyed by output script: that is what a block
-- carries. (keychain, derivation_index) is unique per chain, so no index is handed out twice.
CREATE TABLE btc_addresses (
    chain TEXT NOT NULL,
    script_pubkey TEXT NOT NULL,
    address TEXT NOT NULL,
    keychain BIGINT NOT NULL,
    derivation_index BIGINT NOT NULL,
    customer_id TEXT REFERENCES customers (id),
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (chain, script_pubkey),
    UNIQUE (chain, keychain, derivation_index)
);
CREATE INDEX btc_addresses_watch ON btc_addresses (chain, created_at_ms, script_pubkey);

-- btc_utxos: the custodian's UTXO set, written in the same transaction as the block that created or spent each
-- output (so a replay after a crash finds it and writes nothing twice). The transaction is identified by txid
-- AND wtxid (C5): the txid is what outpoints name; the wtxid commits to the witness too. `status`:
-- 'unspent', 'spent' (spent_by_* set: the spending transaction and the block it confirmed in) or
-- 'rolled_back' (its block was orphaned by a re-org; a later block may confirm the same transaction again and
-- revive the row). `coinbase` is 1 for coinbase outputs, which need 100 confirmations before they can be spent.
CREATE TABLE btc_utxos (
    chain TEXT NOT NULL,
    txid TEXT NOT NULL,
    vout BIGINT NOT NULL,
    wtxid TEXT NOT NULL,
    value_sat BIGINT NOT NULL,
    script_pubkey TEXT NOT NULL,
    keychain BIGINT NOT NULL,
    derivation_index BIGINT NOT NULL,
    coinbase BIGINT NOT NULL,
    block_height BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    spent_by_txid TEXT,
    spent_by_wtxid TEXT,
    spent_height BIGINT,
    spent_block_hash TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (chain, txid, vout)
);
CREATE INDEX btc_utxos_spendable ON btc_utxos (chain, status, block_height);
CREATE INDEX btc_utxos_spent_height ON btc_utxos (chain, spent_height);
