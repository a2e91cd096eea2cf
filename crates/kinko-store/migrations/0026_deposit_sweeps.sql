-- Deposit sweeping (K13, C1, M10): consolidating customer deposit addresses into the hot wallet. A sweep (or the
-- gas top-up an ERC-20 sweep needs first) travels the withdrawal pipeline as a `custodian_transfer` withdrawals
-- row; this table says which rows are sweeps, of which deposit address, and the intent reason the pipeline
-- rebuilds their intent with ('deposit sweep', or 'deposit gas top-up: index N').
--
-- `in_flight` is 1 while the row's withdrawal has not reached a terminal status and NULL after: the unique index
-- lets at most one sweep or top-up per deposit address be in flight (NULLs never collide, in SQLite and
-- PostgreSQL alike), so a second sweep is never decided from a balance the first has not lowered yet, and two
-- transactions from one deposit address never compete for its gas.
CREATE TABLE deposit_sweeps (
    withdrawal_id TEXT PRIMARY KEY REFERENCES withdrawals (id),
    purpose TEXT NOT NULL,
    deposit_address TEXT NOT NULL,
    derivation_index BIGINT NOT NULL,
    asset TEXT NOT NULL,
    intent_reason TEXT NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    in_flight BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX deposit_sweeps_one_in_flight ON deposit_sweeps (deposit_address, in_flight);
CREATE INDEX deposit_sweeps_open ON deposit_sweeps (in_flight, created_at_ms);
