-- Emergency freezes and real-time reconciliation (K19, S5, L3).

-- The server's freezes: one row per freeze, active while lifted_at_ms is NULL. Set by one operator, by the
-- command line on the custody host or by the reconciliation (`system:reconciliation`); lifted only by an
-- executed unfreeze request, whose id is kept.
CREATE TABLE freezes (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_at_ms BIGINT NOT NULL,
    lifted_at_ms BIGINT,
    lifted_by_request TEXT
);
CREATE INDEX freezes_active ON freezes (lifted_at_ms);

-- The signer's own record of freezes: an append-only log of `freeze` and `lift` events that the signer
-- replays at start-up. A lift carries the unfreeze request's params and the operators' Ed25519 approvals,
-- which the signer verifies again against its own registry when it replays the log, so a lift row written
-- behind the signer's back does not unfreeze it.
CREATE TABLE signer_freeze_log (
    seq BIGINT PRIMARY KEY,
    event TEXT NOT NULL,
    freeze_id TEXT NOT NULL,
    body_json TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);

-- Where the reconciliation of spends has got to, per chain (its own cursor, apart from deposit detection).
CREATE TABLE reconciliation_cursors (
    chain TEXT PRIMARY KEY,
    next_block BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Findings and balance reports. kind: `unknown_spend` (a spend from a managed address kinko did not sign)
-- or `balance` (on-chain holdings of the custodian's addresses against customer liabilities per asset).
CREATE TABLE reconciliation_reports (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    chain TEXT NOT NULL,
    asset TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    block_number BIGINT,
    on_chain TEXT NOT NULL,
    liabilities TEXT NOT NULL,
    surplus TEXT NOT NULL,
    shortfall TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    -- For an unknown spend: the managed address it came from and the nonce it used, so the nonce check
    -- does not report a spend that is already recorded.
    wallet TEXT,
    nonce BIGINT
);
CREATE INDEX reconciliation_reports_kind ON reconciliation_reports (kind, at_ms);
