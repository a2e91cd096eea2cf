-- The signer's records, part 2. The signer re-decodes every payload it signed for a slot to judge a fee
-- bump with its own code, so it keeps the payload itself, not just its hash.
ALTER TABLE signer_slots ADD COLUMN payload TEXT NOT NULL DEFAULT '';

-- One row per used slot, with how many distinct payloads were signed for it. Every signature updates
-- it with a compare-and-set on `payloads`, so two signers that both saw the slot in the same state
-- cannot both add a payload: on PostgreSQL the second blocks on the row (or on the primary key for a
-- new slot) and then finds the count changed; on SQLite `BEGIN IMMEDIATE` already serialises them.
CREATE TABLE signer_slot_heads (
    key_id TEXT NOT NULL,
    chain TEXT NOT NULL,
    slot TEXT NOT NULL,
    payloads BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, chain, slot)
);
