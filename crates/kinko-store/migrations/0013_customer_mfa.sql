-- Customer second factors (U2, U3), step-up (U4) and the transaction password (U9).
-- Portable between SQLite and PostgreSQL: only TEXT and BIGINT columns, booleans and "unset" times as 0.

-- Step-up: a session is at the step-up level while `stepped_up_until_ms` is in the future, and falls back
-- to its `auth_level` by itself when that passes (no job has to lower it).
ALTER TABLE sessions ADD COLUMN stepped_up_until_ms BIGINT NOT NULL DEFAULT 0;

-- One row per customer who ever enrolled or failed a factor. The TOTP secret is kept base32 because the
-- server must recompute codes (RFC 6238); `totp_last_step` only moves forward (compare-and-set), so each
-- code is accepted once. `failed_attempts`/`locked_until_ms` throttle second-factor guessing across all
-- factors (a 6-digit code is guessable without it); they survive removing the TOTP factor.
CREATE TABLE customer_mfa (
    customer_id TEXT PRIMARY KEY REFERENCES customers (id),
    totp_secret TEXT,
    totp_last_step BIGINT NOT NULL,
    totp_activated_at_ms BIGINT NOT NULL,
    failed_attempts BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL
);

-- A TOTP enrolment between "secret shown" and "first code confirmed"; single-use and expiring.
CREATE TABLE customer_totp_enrolments (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    totp_secret TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX customer_totp_enrolments_customer ON customer_totp_enrolments (customer_id);

-- Recovery codes: only the sha256 of each (100 random bits, so no salt or slow hash is needed);
-- `used_at_ms` = 0 while unused, set once by compare-and-set.
CREATE TABLE customer_recovery_codes (
    customer_id TEXT NOT NULL REFERENCES customers (id),
    code_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, code_hash)
);

-- WebAuthn passkeys: the webauthn-rs `Passkey` as JSON (public key, credential id, counter).
CREATE TABLE customer_passkeys (
    credential_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    passkey_json TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    last_used_at_ms BIGINT NOT NULL
);
CREATE INDEX customer_passkeys_customer ON customer_passkeys (customer_id);

-- WebAuthn ceremony state between start and finish: server-side, one per (session, ceremony), taken
-- (deleted) by the finish request, refused once expired.
CREATE TABLE customer_webauthn_states (
    session_token_hash TEXT NOT NULL,
    ceremony TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    state_json TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (session_token_hash, ceremony)
);

-- The transaction password (U9): argon2id PHC string, separate from the login password, with its own
-- failure count and lockout.
CREATE TABLE customer_transaction_passwords (
    customer_id TEXT PRIMARY KEY REFERENCES customers (id),
    password_hash TEXT NOT NULL,
    failed_attempts BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
