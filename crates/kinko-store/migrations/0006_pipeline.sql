-- The withdrawal pipeline persists the fees and gas it plans to sign with *before* signing, so that a
-- re-sign after a crash produces the identical payload (the signer accepts the same payload for a nonce
-- again, but refuses a different one unless it is a fee bump).
ALTER TABLE withdrawals ADD COLUMN planned_max_fee_per_gas TEXT;
ALTER TABLE withdrawals ADD COLUMN planned_max_priority_fee_per_gas TEXT;
ALTER TABLE withdrawals ADD COLUMN gas_limit BIGINT;
