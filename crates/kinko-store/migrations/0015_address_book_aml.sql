-- Address book and wallet binding (U13), anti-money-laundering cases and withdrawal details (U14).
-- Portable between SQLite and PostgreSQL: only TEXT and BIGINT columns, "unset" times as 0.

-- Saved withdrawal destinations. An entry is usable from `usable_at_ms` (created + cooling-off), so a
-- destination added by someone holding a stolen session cannot be used before the customer, told by a
-- notice, can react. Removal is soft (`removed_at_ms` > 0): the record of what was saved stays.
CREATE TABLE address_book (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    label TEXT NOT NULL,
    asset TEXT NOT NULL,
    chain TEXT NOT NULL,
    -- Lower-case 0x-hex.
    address TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    usable_at_ms BIGINT NOT NULL,
    removed_at_ms BIGINT NOT NULL
);
CREATE INDEX address_book_customer ON address_book (customer_id, removed_at_ms);
-- One live entry per (customer, asset, address); removed entries do not count.
CREATE UNIQUE INDEX address_book_live ON address_book (customer_id, asset, address) WHERE removed_at_ms = 0;

-- Server challenges a self-hosted wallet signs (EIP-191 personal_sign) to prove control. Single use:
-- `used_at_ms` is set once by compare-and-set, whatever the outcome of the attempt.
CREATE TABLE wallet_binding_challenges (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    address TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT NOT NULL
);
CREATE INDEX wallet_binding_challenges_customer ON wallet_binding_challenges (customer_id, created_at_ms);

-- Bound wallets: at most one live binding per customer (`unbound_at_ms` = 0). `proof` says how control
-- was shown: `step_up` (the wallet's signature plus a fresh step-up) or `migration` (the wallet's signature
-- plus one from the previously bound wallet over the same challenge, `previous_binding_id`).
CREATE TABLE wallet_bindings (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    challenge_id TEXT NOT NULL REFERENCES wallet_binding_challenges (id),
    signature TEXT NOT NULL,
    proof TEXT NOT NULL,
    previous_binding_id TEXT,
    previous_signature TEXT,
    created_at_ms BIGINT NOT NULL,
    unbound_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX wallet_bindings_live ON wallet_bindings (customer_id) WHERE unbound_at_ms = 0;

-- AML cases for compliance review (U14). `(rule, dedupe_key)` is unique so that re-evaluating the same
-- event (a retried request) opens one case. `closed_at_ms` = 0 while open.
CREATE TABLE aml_cases (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    rule TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    closed_at_ms BIGINT NOT NULL,
    UNIQUE (rule, dedupe_key)
);
CREATE INDEX aml_cases_state ON aml_cases (state, created_at_ms);
CREATE INDEX aml_cases_customer ON aml_cases (customer_id, created_at_ms);

-- Purpose and beneficiary of a withdrawal (U14), written before the withdrawal itself (keyed by the id
-- the server chose for it), so no withdrawal that needed them exists without them. A row whose
-- withdrawal was then refused stays behind as a record of the attempt.
CREATE TABLE withdrawal_aml_details (
    withdrawal_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    purpose TEXT,
    beneficiary TEXT,
    created_at_ms BIGINT NOT NULL
);
