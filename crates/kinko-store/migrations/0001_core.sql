-- kinko core schema. Portable between SQLite and PostgreSQL on purpose: only TEXT and BIGINT columns,
-- application-assigned keys, amounts as decimal TEXT in base units (u128 does not fit BIGINT), hashes and
-- byte strings as lower-case hex TEXT.

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Asset data (M8): one row per ledger account, totals as decimal strings.
CREATE TABLE ledger_accounts (
    account TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    asset TEXT NOT NULL,
    debits TEXT NOT NULL,
    credits TEXT NOT NULL
);
CREATE INDEX ledger_accounts_holder ON ledger_accounts (holder, asset);

-- The hash-chained journal. (kind, reference) is unique: re-posting an event is a no-op.
CREATE TABLE ledger_entries (
    seq BIGINT PRIMARY KEY,
    recorded_at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    transfers TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (kind, reference)
);

-- One row: the journal's head. Locking it serialises postings across instances.
CREATE TABLE ledger_head (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO ledger_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Named counters (e.g. the next deposit-address derivation index per chain).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
