-- The seal (K3, K4, K16): key-encryption keys, each wrapped by the master key that only K of N custodian
-- shares reconstruct. The master key itself is never stored; its fingerprint and the custodians' share
-- commitments live in `meta` ("seal_config", JSON).
CREATE TABLE keks (
    id TEXT PRIMARY KEY,
    -- AEAD blob (kinko_keys::kek format) of the KEK under the master key; key id = this id, purpose "kek".
    wrapped_by_master TEXT NOT NULL,
    -- active | retiring | destroyed
    state TEXT NOT NULL,
    -- Non-secret key check value of the KEK (Kek::fingerprint), to tell KEKs apart in logs and reports.
    fingerprint TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- At most one KEK wraps new keys at a time.
CREATE UNIQUE INDEX keks_one_active ON keks (state) WHERE state = 'active';

-- Which KEK wrapped each key ('' only for rows written before the seal existed).
ALTER TABLE keys ADD COLUMN kek_id TEXT NOT NULL DEFAULT '';
