-- The signer's own copy of the operator registry log (K8, O3, O4): one row per applied change, in seq
-- order, with the change and the Ed25519 approvals that made it, both as the signer received them. The
-- signer verifies every signature again when it replays these rows at startup, so an edited row stops the
-- signer rather than changing whom it trusts. Rows are only ever inserted.
CREATE TABLE signer_registry_log (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    change_json TEXT NOT NULL,
    approvals_json TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
);

-- The operators whose approvals the signer verified for a signature (K12), as a JSON array of ids.
ALTER TABLE key_access_log ADD COLUMN approvers_json TEXT NOT NULL DEFAULT '[]';
