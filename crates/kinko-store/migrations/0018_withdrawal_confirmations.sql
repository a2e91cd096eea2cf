-- Second-channel confirmation of withdrawals (U4, U8, U9). One row per withdrawal that waits in
-- `awaiting_confirmation`. Only the sha256 of the one-time token is kept (lower-case hex); the token itself
-- leaves only in the notice. `then_status` is what the policy decided at creation (`approved` or
-- `pending_approval`) and is applied only on confirmation; `approval_json` carries the operator request to
-- file then (NULL for `approved`). `state`: awaiting | confirmed | expired | cancelled. `reasons_json`: why
-- confirmation was demanded (amount, new destination, risk with its signals).
CREATE TABLE withdrawal_confirmations (
    withdrawal_id TEXT PRIMARY KEY REFERENCES withdrawals (id),
    customer_id TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    then_status TEXT NOT NULL,
    approval_json TEXT,
    reasons_json TEXT NOT NULL,
    risk_score BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    closed_at_ms BIGINT
);
CREATE INDEX withdrawal_confirmations_due ON withdrawal_confirmations (state, expires_at_ms);
CREATE INDEX withdrawals_customer_destination ON withdrawals (customer_id, destination, status);
