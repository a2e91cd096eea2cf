-- Node monitoring (C6, C7, C10) and maintenance windows (S4).

-- The latest verdict per monitored component: `nodes:<chain>` (the node monitor's verdict on a chain's
-- configured nodes) and `signer` (whether the signer answers and is unsealed). One row each, overwritten
-- every poll; the halt and the resume themselves are recorded as ops events and alerts, once each.
-- The pipeline signs and sends only under a healthy `nodes:<chain>` verdict whose valid_until_ms has not
-- passed (kinko_core::node_health), so a monitor that stopped writing halts withdrawals.
CREATE TABLE health_checks (
    component TEXT PRIMARY KEY,
    healthy BIGINT NOT NULL,
    -- JSON array of kinko_core::node_health::HaltReason (empty when healthy).
    reasons_json TEXT NOT NULL,
    -- Since when the component has been in its current state.
    since_ms BIGINT NOT NULL,
    checked_at_ms BIGINT NOT NULL,
    -- The verdict vouches for the component until then; after it, it is stale (the monitor stopped).
    valid_until_ms BIGINT NOT NULL,
    checked_by TEXT NOT NULL
);

-- Announced maintenance windows (S4). During [starts_at_ms, ends_at_ms) of a window that is not
-- cancelled, the customer API answers 503 with `message` and Retry-After; /v1/status lists windows ahead.
CREATE TABLE maintenance_windows (
    id TEXT PRIMARY KEY,
    starts_at_ms BIGINT NOT NULL,
    ends_at_ms BIGINT NOT NULL,
    message TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    cancelled_by TEXT,
    cancelled_at_ms BIGINT
);
CREATE INDEX maintenance_windows_ends ON maintenance_windows (ends_at_ms);
