-- Customer notices (issue 5, U10, U11, L5): a transactional outbox. A rule that must tell the customer
-- something (a login, a withdrawal, a confirmation code) inserts a row here in the SAME transaction as the
-- event, so a notice exists exactly when its event committed; a background sender delivers it by e-mail
-- or webhook and records the outcome. Rows are never deleted by the sender: `failed` ones stay for
-- operators to see and re-queue.
CREATE TABLE notices (
    id TEXT PRIMARY KEY,
    -- NULL for notices that concern no customer (e.g. an alert to the operators' address).
    customer_id TEXT REFERENCES customers (id),
    -- 'email' | 'webhook'
    channel TEXT NOT NULL,
    -- An e-mail address, or for webhooks the identifier the receiving relay routes on.
    recipient TEXT NOT NULL,
    -- What happened, e.g. 'login', 'withdrawal_requested', 'withdrawal_confirmation'.
    kind TEXT NOT NULL,
    -- With `kind`, names the event: the same event never notifies twice, however often it is enqueued.
    dedupe_key TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- May hold a one-time code: never logged.
    body TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    -- 'pending' | 'sent' | 'failed'
    state TEXT NOT NULL,
    -- Delivery attempts started (counted when claimed, so a sender that crashes mid-delivery still uses
    -- up an attempt and a poison notice cannot loop forever).
    attempts BIGINT NOT NULL,
    -- Not due before this; while a sender holds the notice it is the end of that sender's lease.
    next_attempt_at_ms BIGINT NOT NULL,
    lease_owner TEXT,
    last_error TEXT,
    created_at_ms BIGINT NOT NULL,
    sent_at_ms BIGINT,
    UNIQUE (kind, dedupe_key)
);

-- The sender's work query: due pending notices, oldest first.
CREATE INDEX notices_due ON notices (state, next_attempt_at_ms);
CREATE INDEX notices_customer ON notices (customer_id, created_at_ms);
