-- Login protection (U10, U11, U12, M2): login history, account lockout with back-off, IP blocks.
-- Portable between SQLite and PostgreSQL: only TEXT and BIGINT columns, booleans and "unset" times as 0.

-- Every login attempt that got as far as the password check or the account lock: successes and failures,
-- on existing accounts (`customer_id` set; the customer's login history) and on unknown e-mails
-- (`customer_id` NULL; counted only for per-IP limits). `account_key` is the sha256 of the normalised
-- e-mail tried, so "many accounts from one IP" is countable without keeping unknown addresses in clear.
-- `outcome`: success | wrong_password | locked. Attempts refused because the IP is blocked are not stored
-- (they cost nothing and would only let an attacker grow this table).
CREATE TABLE login_attempts (
    id TEXT PRIMARY KEY,
    customer_id TEXT,
    account_key TEXT NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX login_attempts_customer ON login_attempts (customer_id, at_ms);
CREATE INDEX login_attempts_ip ON login_attempts (ip, at_ms);

-- Per-account lockout, keyed like the attempts by the sha256 of the e-mail tried, so an unknown e-mail is
-- counted and locked exactly like a real one (same queries, same time, same answers: no enumeration);
-- `customer_id` is set when the e-mail belongs to a customer. `consecutive_failures` counts wrong passwords
-- since the last success or lock start; `lock_count` counts locks since the last success (each lock lasts
-- twice the previous, up to a cap).
CREATE TABLE login_account_locks (
    account_key TEXT PRIMARY KEY,
    customer_id TEXT,
    consecutive_failures BIGINT NOT NULL,
    lock_count BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- IPs blocked by the per-IP rules (too many failures; many accounts tried). `reason`: failures | accounts.
CREATE TABLE login_ip_blocks (
    ip TEXT PRIMARY KEY,
    blocked_until_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
