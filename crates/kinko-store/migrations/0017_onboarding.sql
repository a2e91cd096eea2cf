-- Onboarding (U1, M3): e-mail verification and the KYC workflow. Portable between SQLite and PostgreSQL:
-- only TEXT and BIGINT columns, "unset" times as 0 and "unset" ids as ''.

-- One row per customer who has started onboarding (registration writes it). A customer without a row
-- (registered before this migration) counts as unverified with no KYC submission: money cannot leave
-- their account until they complete onboarding (fail closed).
CREATE TABLE customer_onboarding (
    customer_id TEXT PRIMARY KEY REFERENCES customers (id),
    -- 0 until the customer proved the mailbox with a verification token.
    email_verified_at_ms BIGINT NOT NULL DEFAULT 0,
    -- The customer's current KYC submission ('' = none yet); its `state` is the customer's KYC state.
    kyc_submission_id TEXT NOT NULL DEFAULT '',
    updated_at_ms BIGINT NOT NULL
);

-- E-mail verification tokens, by sha256 only (a database leak yields no usable token). Single use:
-- `used_at_ms` is set when the token verifies the address, or when a newer token supersedes it.
CREATE TABLE email_verification_tokens (
    token_hash TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX email_verification_tokens_customer ON email_verification_tokens (customer_id, created_at_ms);

-- Every KYC submission, kept after its decision (a resubmission after a rejection is a new row). The
-- documents are opaque references (kind + the custodian's reference), never the documents themselves.
CREATE TABLE kyc_submissions (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    -- submitted | under_review | verified | rejected (kinko_core::onboarding::KycState)
    state TEXT NOT NULL,
    documents_json TEXT NOT NULL,
    submitted_at_ms BIGINT NOT NULL,
    -- The operator who took the case for review, and when ('' / 0 before).
    reviewer_id TEXT NOT NULL DEFAULT '',
    review_started_at_ms BIGINT NOT NULL DEFAULT 0,
    -- The operator (or `dev-auto`) who decided, when, and why ('' / 0 before).
    decided_by TEXT NOT NULL DEFAULT '',
    decided_at_ms BIGINT NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX kyc_submissions_state ON kyc_submissions (state, submitted_at_ms);
CREATE INDEX kyc_submissions_customer ON kyc_submissions (customer_id, submitted_at_ms);
-- At most one open submission per customer, whatever the application does.
CREATE UNIQUE INDEX kyc_submissions_one_open ON kyc_submissions (customer_id)
    WHERE state IN ('submitted', 'under_review');
