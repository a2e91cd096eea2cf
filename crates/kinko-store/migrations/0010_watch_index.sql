-- Deposit detection pages through watched addresses by (chain, created_at_ms, address); without this
-- index every page and every refresh scanned and sorted the whole table (9 s for 1,000,000 addresses).
CREATE INDEX deposit_addresses_watch ON deposit_addresses (chain, created_at_ms, address);
