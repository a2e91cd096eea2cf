-- The audit trail (L2, L4–L6): one hash-chained, signed entry per action by a customer, an operator or
-- the system. Append-only by code: nothing in kinko updates or deletes these rows, and `kinko audit verify`
-- finds any row edited, deleted, inserted or reordered by someone else. Hashes, digests and signatures are
-- lower-case hex; `actor_kind` is customer | operator | system | anonymous.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    role TEXT NOT NULL,
    terminal TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    outcome TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor_id, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);

-- The chain's head, one row. Every append locks it (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE
-- already serialises writers), so appends from several instances form one chain. `public_key` is the
-- audit key the genesis pinned ('' before the genesis); an instance with another key is refused.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    public_key TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, public_key) VALUES (1, 0, '', '');

-- Periodic inspection reports (Table A-1's inspect step): what was checked, the chain head at the time
-- (for the auditor to keep outside the system) and the findings.
CREATE TABLE audit_reports (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    findings BIGINT NOT NULL,
    report_json TEXT NOT NULL
);
CREATE INDEX audit_reports_at ON audit_reports (at_ms);
