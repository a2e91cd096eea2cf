-- Operator-instructed transfers between the custodian's own wallets (M10) travel the withdrawal pipeline as
-- withdrawals rows, so they get its persisted, idempotent, crash-resumable steps (nonce reservation, signing
-- with the collected approvals, broadcast, confirmation depth) without a second state machine.
--
-- `kind` (kinko_core::withdrawal::WithdrawalKind) says whose money moves, and so which postings settle
-- the row: `customer_withdrawal` (every existing row) or `custodian_transfer` (wallet → wallet).
ALTER TABLE withdrawals ADD COLUMN kind TEXT NOT NULL DEFAULT 'customer_withdrawal';

-- `withdrawals.customer_id` is NOT NULL REFERENCES customers. Rather than rebuild the table to relax that
-- (SQLite cannot drop a constraint in place), a custodian transfer names this reserved row
-- (kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID). Its e-mail has no '@', so sign-up and login (which
-- normalise to an address with one) can never reach it, and its password hash is no PHC string, so nothing
-- can verify against it. It owns no deposit address and no ledger account.
INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ('custodian', 'custodian (reserved)', '!', 0);
