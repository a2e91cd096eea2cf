-- Key lifecycles (K2, K4, K5, K7): every state change of a signing key, the master seed or a KEK, with
-- who and why. Append-only: the row is written in the same transaction as the state change it records.
CREATE TABLE key_transitions (
    id TEXT PRIMARY KEY,
    -- 'key' (signing key or master seed, a row of `keys`) or 'kek' (a row of `keks`).
    subject TEXT NOT NULL,
    key_id TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX key_transitions_key ON key_transitions (subject, key_id, at_ms);

-- KEK rotation (K4) as a restartable operation: re-wrapping is idempotent per key row (its `kek_id`
-- says which KEK wrapped it), so a killed rotation resumes from this record. At most one is open.
CREATE TABLE kek_rotations (
    id TEXT PRIMARY KEY,
    old_kek_id TEXT NOT NULL,
    new_kek_id TEXT NOT NULL,
    -- rewrapping -> done
    state TEXT NOT NULL,
    keys_rewrapped BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX kek_rotations_open ON kek_rotations (state) WHERE state <> 'done';
