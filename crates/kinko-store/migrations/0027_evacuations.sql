-- Evacuation of a compromised wallet (K19, S5). An approved `evacuation` ops request writes one
-- custodian_transfer withdrawals row per asset, from the frozen wallet to the new destination, already
-- approved; this table ties each row to its request. The pipeline reads it to let the row through the
-- freeze and to present the request's params and approvals to the signer, which verifies them itself.
CREATE TABLE evacuation_transfers (
    withdrawal_id TEXT PRIMARY KEY REFERENCES withdrawals (id),
    request_id TEXT NOT NULL REFERENCES ops_requests (id),
    asset TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE UNIQUE INDEX evacuation_transfers_request_asset ON evacuation_transfers (request_id, asset);
