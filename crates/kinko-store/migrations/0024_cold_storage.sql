-- Cold storage (K13, K14). A cold wallet is a `wallets` row with tier 'cold' whose key_id names the offline
-- key; kinko holds no key material for it. A cold → hot refill is a custodian_transfer withdrawals row that
-- waits in `awaiting_offline_signature` (nonce and fees reserved) until a signed bundle is imported.
--
-- One row per exported withdrawal: the unsigned bundle exactly as written to the operator's file (its
-- sha256 is what the offline signer signs over), so an import is checked against what kinko stored, never
-- against the operator's copy. `tx_hash` is set by the first verified import; a different signed
-- transaction for the same row is refused afterwards.
CREATE TABLE offline_bundles (
    withdrawal_id TEXT PRIMARY KEY REFERENCES withdrawals (id),
    unsigned_json TEXT NOT NULL,
    unsigned_sha256 TEXT NOT NULL,
    exported_at_ms BIGINT NOT NULL,
    imported_at_ms BIGINT,
    tx_hash TEXT
);
