//! The customer's address book and bound self-hosted wallets (U13).
//!
//! An address-book entry becomes usable only at `usable_at_ms` (its creation plus the configured
//! cooling-off), so a destination added with a stolen session cannot receive funds before the customer,
//! told by a notice enqueued in the same transaction, can react. A bound wallet needs no cooling-off: its
//! owner proved control of it by signing a server challenge (single use, expiring).
//!
//! Addresses are stored lower-case 0x-hex; the server validates and normalises them before they get here.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::is_unique_violation;
use crate::notices::NewNotice;
use crate::{Result, Store, StoreError, sql};

/// Bound on live address-book entries per customer.
pub const ENTRIES_PER_CUSTOMER_MAX: i64 = 200;
/// Bound on a page of address-book entries.
pub const ENTRIES_PAGE_MAX: u32 = 200;
/// Bound on unused, unexpired wallet-binding challenges per customer.
pub const OPEN_CHALLENGES_MAX: i64 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressBookEntry {
    pub id: String,
    pub customer_id: String,
    pub label: String,
    pub asset: String,
    pub chain: String,
    /// Lower-case 0x-hex.
    pub address: String,
    pub created_at_ms: i64,
    pub usable_at_ms: i64,
    /// 0 while the entry is live.
    pub removed_at_ms: i64,
}

const ENTRY_COLUMNS: &str = "id, customer_id, label, asset, chain, address, created_at_ms, usable_at_ms, removed_at_ms";

fn entry_from_row(r: &AnyRow) -> Result<AddressBookEntry> {
    Ok(AddressBookEntry {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        label: r.try_get("label")?,
        asset: r.try_get("asset")?,
        chain: r.try_get("chain")?,
        address: r.try_get("address")?,
        created_at_ms: r.try_get("created_at_ms")?,
        usable_at_ms: r.try_get("usable_at_ms")?,
        removed_at_ms: r.try_get("removed_at_ms")?,
    })
}

/// A server challenge for binding `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletChallenge {
    pub id: String,
    pub customer_id: String,
    /// Lower-case 0x-hex: the wallet to be bound.
    pub address: String,
    /// The exact text the wallet signs (EIP-191 personal_sign).
    pub message: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// 0 while unused.
    pub used_at_ms: i64,
}

const CHALLENGE_COLUMNS: &str = "id, customer_id, address, message, created_at_ms, expires_at_ms, used_at_ms";

fn challenge_from_row(r: &AnyRow) -> Result<WalletChallenge> {
    Ok(WalletChallenge {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        address: r.try_get("address")?,
        message: r.try_get("message")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        used_at_ms: r.try_get("used_at_ms")?,
    })
}

/// How control of a bound wallet was shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingProof {
    /// The wallet's signature plus a fresh step-up of the session.
    StepUp,
    /// The wallet's signature plus one from the previously bound wallet over the same challenge.
    Migration,
}

impl BindingProof {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingProof::StepUp => "step_up",
            BindingProof::Migration => "migration",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletBinding {
    pub id: String,
    pub customer_id: String,
    pub chain: String,
    /// Lower-case 0x-hex.
    pub address: String,
    pub challenge_id: String,
    /// 0x-hex, 65 bytes.
    pub signature: String,
    /// `step_up` or `migration`.
    pub proof: String,
    pub previous_binding_id: Option<String>,
    pub previous_signature: Option<String>,
    pub created_at_ms: i64,
    /// 0 while bound.
    pub unbound_at_ms: i64,
}

const BINDING_COLUMNS: &str = "id, customer_id, chain, address, challenge_id, signature, proof, previous_binding_id, \
     previous_signature, created_at_ms, unbound_at_ms";

fn binding_from_row(r: &AnyRow) -> Result<WalletBinding> {
    Ok(WalletBinding {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        chain: r.try_get("chain")?,
        address: r.try_get("address")?,
        challenge_id: r.try_get("challenge_id")?,
        signature: r.try_get("signature")?,
        proof: r.try_get("proof")?,
        previous_binding_id: r.try_get("previous_binding_id")?,
        previous_signature: r.try_get("previous_signature")?,
        created_at_ms: r.try_get("created_at_ms")?,
        unbound_at_ms: r.try_get("unbound_at_ms")?,
    })
}

/// Why [`Store::bind_wallet`] did not bind.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The challenge was used meanwhile (another request won the compare-and-set).
    #[error("challenge already used")]
    ChallengeUsed,
    /// The binding the migration proof was made for is no longer the live one.
    #[error("the previously bound wallet changed meanwhile")]
    PreviousChanged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The customer's e-mail address (where notices about their account go).
    pub async fn customer_email(&self, customer_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT email FROM customers WHERE id = $1")
            .bind(customer_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Adds `entry` and enqueues `notice` in one transaction. A live entry for the same (customer, asset,
    /// address) is `Conflict("address_book_duplicate")`; a customer at [`ENTRIES_PER_CUSTOMER_MAX`] live
    /// entries is `Conflict("address_book_full")`.
    pub async fn add_address_book_entry(&self, entry: &AddressBookEntry, notice: &NewNotice) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let live: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM address_book WHERE customer_id = $1 AND removed_at_ms = 0")
                .bind(&entry.customer_id)
                .fetch_one(&mut *tx)
                .await?;
        if live >= ENTRIES_PER_CUSTOMER_MAX {
            return Err(StoreError::Conflict("address_book_full".into()));
        }
        let res = sqlx::query(
            "INSERT INTO address_book (id, customer_id, label, asset, chain, address, created_at_ms, usable_at_ms, \
             removed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
        )
        .bind(&entry.id)
        .bind(&entry.customer_id)
        .bind(&entry.label)
        .bind(&entry.asset)
        .bind(&entry.chain)
        .bind(&entry.address)
        .bind(entry.created_at_ms)
        .bind(entry.usable_at_ms)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict("address_book_duplicate".into())),
            Err(e) => return Err(e.into()),
        }
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The customer's live entries, oldest first.
    pub async fn address_book_entries(&self, customer_id: &str, limit: u32) -> Result<Vec<AddressBookEntry>> {
        let q = format!(
            "SELECT {ENTRY_COLUMNS} FROM address_book WHERE customer_id = $1 AND removed_at_ms = 0 \
             ORDER BY created_at_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sql(q))
            .bind(customer_id)
            .bind(i64::from(limit.min(ENTRIES_PAGE_MAX)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// One live entry of the customer's.
    pub async fn address_book_entry(&self, customer_id: &str, id: &str) -> Result<Option<AddressBookEntry>> {
        let q = format!(
            "SELECT {ENTRY_COLUMNS} FROM address_book WHERE id = $1 AND customer_id = $2 AND removed_at_ms = 0"
        );
        let row = sqlx::query(sql(q)).bind(id).bind(customer_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// The live entry for (customer, asset, address), if saved.
    pub async fn address_book_lookup(
        &self,
        customer_id: &str,
        asset: &str,
        address: &str,
    ) -> Result<Option<AddressBookEntry>> {
        let q = format!(
            "SELECT {ENTRY_COLUMNS} FROM address_book WHERE customer_id = $1 AND asset = $2 AND address = $3 \
             AND removed_at_ms = 0"
        );
        let row = sqlx::query(sql(q)).bind(customer_id).bind(asset).bind(address).fetch_optional(&self.pool).await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Removes a live entry (soft) and enqueues `notice` in one transaction. `false`: no such live entry
    /// of this customer's (nothing written).
    pub async fn remove_address_book_entry(
        &self,
        customer_id: &str,
        id: &str,
        notice: &NewNotice,
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE address_book SET removed_at_ms = $1 WHERE id = $2 AND customer_id = $3 AND removed_at_ms = 0",
        )
        .bind(now_ms.max(1))
        .bind(id)
        .bind(customer_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a new challenge. A customer with [`OPEN_CHALLENGES_MAX`] unused, unexpired challenges is
    /// `Conflict("too_many_challenges")`: each request writes a row, so the rows a session can pile up are
    /// bounded.
    pub async fn insert_wallet_challenge(&self, c: &WalletChallenge) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM wallet_binding_challenges WHERE customer_id = $1 AND used_at_ms = 0 \
             AND expires_at_ms > $2",
        )
        .bind(&c.customer_id)
        .bind(c.created_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        if open >= OPEN_CHALLENGES_MAX {
            return Err(StoreError::Conflict("too_many_challenges".into()));
        }
        sqlx::query(
            "INSERT INTO wallet_binding_challenges (id, customer_id, address, message, created_at_ms, expires_at_ms, \
             used_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&c.id)
        .bind(&c.customer_id)
        .bind(&c.address)
        .bind(&c.message)
        .bind(c.created_at_ms)
        .bind(c.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn wallet_challenge(&self, id: &str) -> Result<Option<WalletChallenge>> {
        let q = format!("SELECT {CHALLENGE_COLUMNS} FROM wallet_binding_challenges WHERE id = $1");
        let row = sqlx::query(sql(q)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(challenge_from_row).transpose()
    }

    /// Uses up a challenge without binding (a failed attempt). `false`: it was already used.
    pub async fn use_wallet_challenge(&self, id: &str, now_ms: i64) -> Result<bool> {
        let res = sqlx::query("UPDATE wallet_binding_challenges SET used_at_ms = $1 WHERE id = $2 AND used_at_ms = 0")
            .bind(now_ms.max(1))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// The customer's live binding.
    pub async fn live_wallet_binding(&self, customer_id: &str) -> Result<Option<WalletBinding>> {
        let q = format!("SELECT {BINDING_COLUMNS} FROM wallet_bindings WHERE customer_id = $1 AND unbound_at_ms = 0");
        let row = sqlx::query(sql(q)).bind(customer_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(binding_from_row).transpose()
    }

    /// Binds `binding` in one transaction: uses its challenge (compare-and-set), unbinds the live binding
    /// (for a migration: exactly `binding.previous_binding_id`, which must still be live), inserts the new
    /// one and enqueues `notice`.
    pub async fn bind_wallet(&self, binding: &WalletBinding, notice: &NewNotice, now_ms: i64) -> Result<(), BindError> {
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE wallet_binding_challenges SET used_at_ms = $1 WHERE id = $2 AND customer_id = $3 AND used_at_ms = 0",
        )
        .bind(now_ms.max(1))
        .bind(&binding.challenge_id)
        .bind(&binding.customer_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if used.rows_affected() != 1 {
            return Err(BindError::ChallengeUsed);
        }
        match &binding.previous_binding_id {
            Some(previous) => {
                let res = sqlx::query(
                    "UPDATE wallet_bindings SET unbound_at_ms = $1 WHERE id = $2 AND customer_id = $3 \
                     AND unbound_at_ms = 0",
                )
                .bind(now_ms.max(1))
                .bind(previous)
                .bind(&binding.customer_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                if res.rows_affected() != 1 {
                    return Err(BindError::PreviousChanged);
                }
            }
            None => {
                sqlx::query(
                    "UPDATE wallet_bindings SET unbound_at_ms = $1 WHERE customer_id = $2 AND unbound_at_ms = 0",
                )
                .bind(now_ms.max(1))
                .bind(&binding.customer_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
        }
        let res = sqlx::query(
            "INSERT INTO wallet_bindings (id, customer_id, chain, address, challenge_id, signature, proof, \
             previous_binding_id, previous_signature, created_at_ms, unbound_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(&binding.id)
        .bind(&binding.customer_id)
        .bind(&binding.chain)
        .bind(&binding.address)
        .bind(&binding.challenge_id)
        .bind(&binding.signature)
        .bind(&binding.proof)
        .bind(binding.previous_binding_id.as_deref())
        .bind(binding.previous_signature.as_deref())
        .bind(binding.created_at_ms)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            // A concurrent binding of the same customer won the live slot.
            Err(e) if is_unique_violation(&e) => return Err(BindError::PreviousChanged),
            Err(e) => return Err(StoreError::from(e).into()),
        }
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}
