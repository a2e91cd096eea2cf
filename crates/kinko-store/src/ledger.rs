//! Persistence of the ledger (M8): posting drafts atomically and idempotently, reading balances, and
//! replaying the whole journal to verify it (`kinko ledger verify`).

use std::collections::BTreeMap;

use kinko_core::ledger::{
    AccountKind, AccountRef, Balance, BalanceLookup, EntryDraft, EntryKind, JournalEntry, Ledger, Transfer,
    VerifyError, check_entry, seal_entry,
};
use kinko_core::{Amount, AssetCode};
use sqlx::Row;

use crate::{Result, Store, StoreError, Tx, parse_hash, parse_u128};

/// What posting did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posted {
    New(JournalEntry),
    /// An entry with the same (kind, reference) already exists; nothing changed.
    AlreadyPosted {
        seq: u64,
    },
}

struct Loaded(BTreeMap<AccountRef, Balance>);

impl BalanceLookup for Loaded {
    fn balance(&self, account: &AccountRef) -> Balance {
        self.0.balance(account)
    }
}

impl Store {
    /// Posts a draft inside the caller's transaction. Idempotent per (kind, reference). Locks the
    /// journal head first, so postings are serialised across instances and sequence numbers have no gaps.
    pub async fn post_entry(&self, tx: &mut Tx, draft: EntryDraft, recorded_at_ms: i64) -> Result<Posted> {
        let head_q = format!("SELECT last_seq, last_hash FROM ledger_head WHERE id = 1{}", self.for_update());
        let head = sqlx::query(crate::sql(head_q)).fetch_one(&mut **tx).await?;
        let last_seq: i64 = head.try_get("last_seq")?;
        let last_hash = parse_hash("ledger_head.last_hash", &head.try_get::<String, _>("last_hash")?)?;

        if let Some(seq) =
            sqlx::query_scalar::<_, i64>("SELECT seq FROM ledger_entries WHERE kind = $1 AND reference = $2")
                .bind(draft.kind.as_str())
                .bind(&draft.reference)
                .fetch_optional(&mut **tx)
                .await?
        {
            return Ok(Posted::AlreadyPosted { seq: seq as u64 });
        }

        let mut loaded = BTreeMap::new();
        for t in &draft.transfers {
            for account in [&t.debit, &t.credit] {
                if !loaded.contains_key(account) {
                    let b = self.load_balance(tx, account).await?;
                    loaded.insert(account.clone(), b);
                }
            }
        }
        let next = check_entry(&Loaded(loaded), &draft)?;
        let entry = seal_entry(draft, last_seq as u64 + 1, recorded_at_ms, last_hash);

        let transfers = serde_json::to_string(&entry.transfers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO ledger_entries (seq, recorded_at_ms, kind, reference, transfers, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.seq as i64)
        .bind(entry.recorded_at_ms)
        .bind(entry.kind.as_str())
        .bind(&entry.reference)
        .bind(transfers)
        .bind(hex::encode(entry.prev_hash))
        .bind(hex::encode(entry.hash))
        .execute(&mut **tx)
        .await?;
        for (account, b) in &next {
            let updated = sqlx::query("UPDATE ledger_accounts SET debits = $1, credits = $2 WHERE account = $3")
                .bind(b.debits.to_string())
                .bind(b.credits.to_string())
                .bind(account.to_string())
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if updated == 0 {
                sqlx::query(
                    "INSERT INTO ledger_accounts (account, kind, holder, asset, debits, credits) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(account.to_string())
                .bind(account.kind.as_str())
                .bind(&account.holder)
                .bind(account.asset.as_str())
                .bind(b.debits.to_string())
                .bind(b.credits.to_string())
                .execute(&mut **tx)
                .await?;
            }
        }
        sqlx::query("UPDATE ledger_head SET last_seq = $1, last_hash = $2 WHERE id = 1")
            .bind(entry.seq as i64)
            .bind(hex::encode(entry.hash))
            .execute(&mut **tx)
            .await?;
        Ok(Posted::New(entry))
    }

    /// Posts one draft in its own transaction.
    pub async fn post(&self, draft: EntryDraft, recorded_at_ms: i64) -> Result<Posted> {
        let mut tx = self.begin_write().await?;
        let posted = self.post_entry(&mut tx, draft, recorded_at_ms).await?;
        tx.commit().await?;
        Ok(posted)
    }

    /// Reads one account's balance, locking its row inside a write transaction on PostgreSQL.
    pub async fn load_balance(&self, tx: &mut Tx, account: &AccountRef) -> Result<Balance> {
        let q = format!("SELECT debits, credits FROM ledger_accounts WHERE account = $1{}", self.for_update());
        let row = sqlx::query(crate::sql(q)).bind(account.to_string()).fetch_optional(&mut **tx).await?;
        row.map(|r| balance_from_row(&r)).transpose().map(Option::unwrap_or_default)
    }

    /// The balance of one account, outside any transaction.
    pub async fn balance(&self, account: &AccountRef) -> Result<Balance> {
        let row = sqlx::query("SELECT debits, credits FROM ledger_accounts WHERE account = $1")
            .bind(account.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| balance_from_row(&r)).transpose().map(Option::unwrap_or_default)
    }

    /// Normal-side balances of one customer's accounts, per asset.
    pub async fn customer_balances(&self, customer_id: &str) -> Result<BTreeMap<(AssetCode, AccountKind), Amount>> {
        let rows = sqlx::query("SELECT account, debits, credits FROM ledger_accounts WHERE holder = $1")
            .bind(customer_id)
            .fetch_all(self.pool())
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let account: AccountRef = r.try_get::<String, _>("account")?.parse()?;
            if account.kind.is_customer() {
                let b = balance_from_row(&r)?;
                out.insert((account.asset.clone(), account.kind), b.normal_amount(account.kind));
            }
        }
        Ok(out)
    }

    /// Every stored account balance.
    pub async fn all_balances(&self) -> Result<BTreeMap<AccountRef, Balance>> {
        let rows = sqlx::query("SELECT account, debits, credits FROM ledger_accounts").fetch_all(self.pool()).await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get::<String, _>("account")?.parse()?, balance_from_row(&r)?);
        }
        Ok(out)
    }

    /// Reads journal entries with `seq` in `[from, from + limit)`.
    pub async fn journal_page(&self, from: u64, limit: u32) -> Result<Vec<JournalEntry>> {
        let rows = sqlx::query(
            "SELECT seq, recorded_at_ms, kind, reference, transfers, prev_hash, hash FROM ledger_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(from as i64)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let transfers: Vec<Transfer> = serde_json::from_str(&r.try_get::<String, _>("transfers")?)
                    .map_err(|e| StoreError::Corrupt(format!("ledger_entries.transfers: {e}")))?;
                Ok(JournalEntry {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    recorded_at_ms: r.try_get("recorded_at_ms")?,
                    kind: r.try_get::<String, _>("kind")?.parse::<EntryKind>()?,
                    reference: r.try_get("reference")?,
                    transfers,
                    prev_hash: parse_hash("ledger_entries.prev_hash", &r.try_get::<String, _>("prev_hash")?)?,
                    hash: parse_hash("ledger_entries.hash", &r.try_get::<String, _>("hash")?)?,
                })
            })
            .collect()
    }

    /// Replays the whole journal: checks the hash chain, sequence, every posting invariant, the stored
    /// head, and that stored balances equal the replayed ones. Names the first bad entry.
    pub async fn verify_ledger(&self, mut progress: impl FnMut(u64)) -> Result<LedgerReport, LedgerVerifyError> {
        const PAGE: u32 = 1_000;
        let mut ledger = Ledger::new();
        let mut from = 1;
        loop {
            let page = self.journal_page(from, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                ledger.replay(e)?;
            }
            from = ledger.last_seq() + 1;
            progress(ledger.last_seq());
        }
        let head = sqlx::query("SELECT last_seq, last_hash FROM ledger_head WHERE id = 1")
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::from)?;
        let head_seq: i64 = head.try_get("last_seq").map_err(StoreError::from)?;
        let head_hash =
            parse_hash("ledger_head.last_hash", &head.try_get::<String, _>("last_hash").map_err(StoreError::from)?)?;
        if head_seq as u64 != ledger.last_seq() || head_hash != ledger.last_hash() {
            return Err(LedgerVerifyError::Head { head_seq: head_seq as u64, journal_seq: ledger.last_seq() });
        }
        let stored = self.all_balances().await?;
        ledger.compare_stored(stored.iter())?;
        ledger.assert_invariants();
        Ok(LedgerReport {
            entries: ledger.last_seq(),
            accounts: stored.len() as u64,
            head_hash: hex::encode(ledger.last_hash()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerReport {
    pub entries: u64,
    pub accounts: u64,
    pub head_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerVerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] VerifyError),
    #[error(
        "journal head says seq {head_seq} but the journal ends at {journal_seq} (entries deleted or appended outside kinko)"
    )]
    Head { head_seq: u64, journal_seq: u64 },
}

fn balance_from_row(r: &sqlx::any::AnyRow) -> Result<Balance> {
    Ok(Balance {
        debits: parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?,
        credits: parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?,
    })
}
