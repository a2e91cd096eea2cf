-- Operators (K8, K12, O2, O3, M2): the server's accounts for people who approve, execute and inspect.
-- Who holds which role is NOT here: roles come from the signed registry log (`operator_registry_log`),
-- replayed and verified at use, so a row here grants nothing by itself.
CREATE TABLE operators (
    id TEXT PRIMARY KEY,
    -- argon2id PHC string; NULL until the operator enrols with their one-time token.
    password_hash TEXT,
    -- RFC 6238 shared secret, base32. Stored in the clear because the server must recompute codes to
    -- verify them (a hash cannot be checked against a TOTP code); NULL until enrolled. Never logged.
    totp_secret TEXT,
    -- The last accepted TOTP time step: a code is accepted once, and never for a step <= this one.
    totp_last_step BIGINT NOT NULL,
    -- sha256 (hex) of the one-time enrolment token; cleared when used.
    enrolment_token_hash TEXT,
    enrolment_expires_at_ms BIGINT NOT NULL,
    failed_logins BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL,
    last_login_at_ms BIGINT,
    last_login_terminal TEXT,
    created_at_ms BIGINT NOT NULL
);

-- Bearer sessions; only the token's sha256 is stored.
CREATE TABLE operator_sessions (
    token_hash TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL REFERENCES operators (id),
    terminal TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id);

-- The server's copy of the signed registry log (kinko_core::operator_registry). Append-only: a change is
-- appended only after the signer accepted it, and a seq is never overwritten.
CREATE TABLE operator_registry_log (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    change_json TEXT NOT NULL,
    approvals_json TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
);

-- Operator requests: Table A-1 processes and kinko's own (personnel, policy change, fiat deposit), and
-- the approval requests of customer withdrawals (id = withdrawal id).
CREATE TABLE ops_requests (
    id TEXT PRIMARY KEY,
    process TEXT NOT NULL,
    kind TEXT NOT NULL,
    params_json TEXT NOT NULL,
    intent_hash TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_terminal TEXT NOT NULL,
    required BIGINT NOT NULL,
    -- requested -> approved -> executed -> inspected; requested/approved -> rejected; -> failed
    state TEXT NOT NULL,
    reasons_json TEXT NOT NULL,
    executor TEXT,
    executed_at_ms BIGINT,
    result_json TEXT,
    inspector TEXT,
    inspected_at_ms BIGINT,
    finding TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX ops_requests_state ON ops_requests (state, created_at_ms);

CREATE TABLE ops_approvals (
    request_id TEXT NOT NULL REFERENCES ops_requests (id),
    operator_id TEXT NOT NULL,
    -- approve | reject
    decision TEXT NOT NULL,
    signature_hex TEXT NOT NULL,
    terminal TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, operator_id)
);

-- The operators' audit trail (K12): every request, approval, rejection, execution, inspection, login and
-- failed login, with who, from where and when. Append-only; ids are uuid v7 so they sort by time.
CREATE TABLE ops_events (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    operator_id TEXT NOT NULL,
    terminal TEXT NOT NULL,
    event TEXT NOT NULL,
    request_id TEXT,
    detail_json TEXT NOT NULL
);
CREATE INDEX ops_events_request ON ops_events (request_id);
