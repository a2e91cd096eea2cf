-- Customers, deposits, withdrawals, wallets and the signer's records.

-- User information (M3): credential verification data only, never a plaintext password.
CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Bearer sessions. Only the token's sha256 is stored. `auth_level` leaves room for MFA and step-up.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    auth_level BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX sessions_customer ON sessions (customer_id);

-- Verification keys / addresses (M9d): per-customer deposit addresses by public derivation (K5, K6).
CREATE TABLE deposit_addresses (
    address TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    asset TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    derivation_index BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (customer_id, asset),
    UNIQUE (chain, derivation_index)
);

-- The custodian's own wallets. `next_nonce` is the next EVM nonce to reserve; locking the row
-- serialises nonce reservation across instances.
CREATE TABLE wallets (
    address TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    tier TEXT NOT NULL,
    key_id TEXT NOT NULL,
    next_nonce BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Blocks the watcher has processed, a bounded window per chain (re-org detection, C2).
CREATE TABLE chain_blocks (
    chain TEXT NOT NULL,
    number BIGINT NOT NULL,
    hash TEXT NOT NULL,
    parent_hash TEXT NOT NULL,
    PRIMARY KEY (chain, number)
);

-- Deposit detection (M6). One row per (tx, block): a transaction re-included in another block after a
-- re-org is a new deposit row, the old one dropped or reversed.
CREATE TABLE deposits (
    id TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    asset TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    address TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    amount TEXT NOT NULL,
    status TEXT NOT NULL,
    confirmations BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (chain, tx_hash, log_index, block_hash)
);
CREATE INDEX deposits_customer ON deposits (customer_id, created_at_ms);
CREATE INDEX deposits_status ON deposits (chain, status);

-- Customer withdrawals (M13) as a persisted state machine (kinko_core::withdrawal).
CREATE TABLE withdrawals (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    asset TEXT NOT NULL,
    chain TEXT NOT NULL,
    amount TEXT NOT NULL,
    destination TEXT NOT NULL,
    source_wallet TEXT NOT NULL,
    status TEXT NOT NULL,
    intent_hash TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    nonce BIGINT,
    tx_hash TEXT,
    fee TEXT,
    included_block BIGINT,
    included_block_hash TEXT,
    confirmations BIGINT NOT NULL,
    error TEXT,
    lease_owner TEXT,
    lease_until_ms BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX withdrawals_work ON withdrawals (status, next_attempt_at_ms);
CREATE INDEX withdrawals_customer ON withdrawals (customer_id, created_at_ms);

-- Every signed version of a withdrawal's transaction (the original and fee bumps for the same nonce),
-- stored before it is broadcast. Tracked by nonce and hash (C4, C5).
CREATE TABLE withdrawal_txs (
    tx_hash TEXT PRIMARY KEY,
    withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
    nonce BIGINT NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    max_priority_fee_per_gas TEXT NOT NULL,
    gas_limit BIGINT NOT NULL,
    raw TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    broadcast_at_ms BIGINT
);
CREATE INDEX withdrawal_txs_withdrawal ON withdrawal_txs (withdrawal_id);

-- Keys wrapped by the KEK (hex AEAD blobs). Never returned by any API.
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    wrapped TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- The signer's anti-double-sign record: for each (key, chain, slot) the payloads it signed. A slot is an
-- EVM nonce or a UTXO outpoint. A different payload for a used slot is refused unless it is a fee bump of
-- the same intent.
CREATE TABLE signer_slots (
    key_id TEXT NOT NULL,
    chain TEXT NOT NULL,
    slot TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    intent_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, chain, slot, payload_sha256)
);

-- Key access log (L2): every signature with the sha256 of what was signed, written before the signature
-- is returned.
CREATE TABLE key_access_log (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    intent_hash TEXT NOT NULL,
    actor TEXT NOT NULL,
    terminal TEXT NOT NULL
);
CREATE INDEX key_access_log_key ON key_access_log (key_id, at_ms);
