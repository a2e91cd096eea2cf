-- Internal transfers between customers (M7) and customer account deletion with an operator-approved
-- restore window (U5, U6). Portable between SQLite and PostgreSQL: only TEXT and BIGINT columns,
-- amounts as decimal TEXT, "unset" times as 0.

-- One row per internal transfer, written in the same transaction as its ledger entry
-- (`internal_transfer:<id>`), so a row exists exactly when the money moved. (sender, idempotency_key) is
-- unique: a retry with the same key finds the first transfer instead of moving money twice.
CREATE TABLE internal_transfers (
    id TEXT PRIMARY KEY,
    sender_id TEXT NOT NULL REFERENCES customers (id),
    recipient_id TEXT NOT NULL REFERENCES customers (id),
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- sha256 of the normalised request, to tell a replay from a different request under the same key.
    request_hash TEXT NOT NULL,
    ledger_seq BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (sender_id, idempotency_key)
);
CREATE INDEX internal_transfers_sender ON internal_transfers (sender_id, created_at_ms);
CREATE INDEX internal_transfers_recipient ON internal_transfers (recipient_id, created_at_ms);

-- Soft deletion (U5): a deleted customer keeps its row, ledger accounts, deposit addresses and keys; only
-- the ability to log in goes. `deleted_at_ms` = 0 while active. `restore_until_ms` is the end of the
-- rollback window (U6) during which operators may restore the account; after it the account stays
-- soft-deleted for good (ledger data is never hard-deleted).
ALTER TABLE customers ADD COLUMN deleted_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN restore_until_ms BIGINT NOT NULL DEFAULT 0;

-- Every deletion, and its restore if any. While deleted, the customer's login password hash is parked here
-- and `customers.password_hash` holds a hash of a random secret nobody knows, so any password check
-- (login, re-authentication) fails exactly like a wrong password, with the same argon2 cost.
CREATE TABLE customer_deletions (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    deleted_at_ms BIGINT NOT NULL,
    restore_until_ms BIGINT NOT NULL,
    -- Emptied on restore (the hash goes back to `customers`).
    parked_password_hash TEXT NOT NULL,
    -- 0 while not restored.
    restored_at_ms BIGINT NOT NULL,
    -- The operator request that restored it.
    restored_by_request TEXT
);
CREATE INDEX customer_deletions_customer ON customer_deletions (customer_id, deleted_at_ms);
