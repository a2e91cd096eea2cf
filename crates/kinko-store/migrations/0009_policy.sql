-- Withdrawal policy versions (K11, K20, O1). An approved `policy_change` operator request appends the next
-- version of a (wallet, asset)'s policy; the highest version wins over the configuration file's policy.
-- Append-only: a version is never rewritten, so the policy in force at any time can be reconstructed.
CREATE TABLE policy_versions (
    wallet TEXT NOT NULL,
    asset TEXT NOT NULL,
    version BIGINT NOT NULL,
    -- kinko_core::policy::PolicyConfig as JSON, validated before it was stored and again when read.
    config_json TEXT NOT NULL,
    -- The ops request that approved it; one version per request (replaying the request stores nothing new).
    request_id TEXT NOT NULL UNIQUE,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (wallet, asset, version)
);

-- The wallet's recent withdrawals feed the rolling limit, velocity and anomaly rules.
CREATE INDEX withdrawals_wallet_history ON withdrawals (source_wallet, asset, created_at_ms);
