//! User information (M3) and authentication records (M2): customers with their password verification
//! data (an argon2id PHC string, never a plaintext password), bearer sessions (only the token's sha256
//! is stored) and per-customer deposit addresses (K5, K6).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

#[derive(Clone, PartialEq, Eq)]
pub struct CustomerRow {
    pub id: String,
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_at_ms: i64,
}

// The password hash is verification data, not a secret key, but it still has no business in logs.
impl std::fmt::Debug for CustomerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// A session as stored. `auth_level` is how strongly the holder authenticated (1 = password only);
/// MFA and step-up raise it without a schema change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub customer_id: String,
    pub auth_level: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositAddressRow {
    pub address: String,
    pub chain: String,
    pub asset: String,
    pub customer_id: String,
    pub derivation_index: i64,
    pub created_at_ms: i64,
}

fn deposit_address_from_row(r: &AnyRow) -> Result<DepositAddressRow> {
    Ok(DepositAddressRow {
        address: r.try_get("address")?,
        chain: r.try_get("chain")?,
        asset: r.try_get("asset")?,
        customer_id: r.try_get("customer_id")?,
        derivation_index: r.try_get("derivation_index")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

const DEPOSIT_ADDRESS_COLUMNS: &str = "address, chain, asset, customer_id, derivation_index, created_at_ms";

/// Whether an error is a unique-constraint violation (a concurrent insert of the same key won).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Inserts a customer. A taken e-mail address is `StoreError::Conflict("email")`.
    pub async fn insert_customer(&self, customer: &CustomerRow) -> Result<()> {
        let res =
            sqlx::query("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
                .bind(&customer.id)
                .bind(&customer.email)
                .bind(&customer.password_hash)
                .bind(customer.created_at_ms)
                .execute(self.pool())
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("email".into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn customer_by_email(&self, email: &str) -> Result<Option<CustomerRow>> {
        let row = sqlx::query("SELECT id, email, password_hash, created_at_ms FROM customers WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(CustomerRow {
                id: r.try_get("id")?,
                email: r.try_get("email")?,
                password_hash: r.try_get("password_hash")?,
                created_at_ms: r.try_get("created_at_ms")?,
            })
        })
        .transpose()
    }

    pub async fn insert_session(&self, token_hash: &str, session: &SessionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, customer_id, auth_level, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(&session.customer_id)
        .bind(session.auth_level)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The session whose token hashes to `token_hash`, expired or not; the caller checks expiry.
    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT customer_id, auth_level, created_at_ms, expires_at_ms FROM sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                customer_id: r.try_get("customer_id")?,
                auth_level: r.try_get("auth_level")?,
                created_at_ms: r.try_get("created_at_ms")?,
                expires_at_ms: r.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    /// Ends a session now (log-out): it is kept, expired, so that nothing referring to it dangles.
    pub async fn expire_session(&self, token_hash: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET expires_at_ms = $1 WHERE token_hash = $2 AND expires_at_ms > $1")
            .bind(now_ms)
            .bind(token_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn deposit_address(&self, customer_id: &str, asset: &str) -> Result<Option<DepositAddressRow>> {
        let q =
            format!("SELECT {DEPOSIT_ADDRESS_COLUMNS} FROM deposit_addresses WHERE customer_id = $1 AND asset = $2");
        let row = sqlx::query(crate::sql(q)).bind(customer_id).bind(asset).fetch_optional(self.pool()).await?;
        row.as_ref().map(deposit_address_from_row).transpose()
    }

    /// The customer's deposit address for `asset`, created on first use. The derivation index comes from
    /// the named counter in the same transaction as the insert, so no index is handed out twice and a
    /// failed insert burns none. `derive` maps an index to the address (public derivation, K6).
    ///
    /// Concurrent first requests: on SQLite `BEGIN IMMEDIATE` serialises them; on PostgreSQL the loser
    /// hits a unique constraint (the address's, or the counter's on its very first use), rolls back and
    /// reads the winner's row or tries again, a bounded number of times.
    pub async fn deposit_address_get_or_create<E: From<StoreError>>(
        &self,
        customer_id: &str,
        chain: &str,
        asset: &str,
        counter: &str,
        derive: impl Fn(i64) -> std::result::Result<String, E>,
        now_ms: i64,
    ) -> std::result::Result<DepositAddressRow, E> {
        for _ in 0..DEPOSIT_ADDRESS_ATTEMPTS_MAX {
            if let Some(existing) = self.deposit_address(customer_id, asset).await? {
                return Ok(existing);
            }
            match self.try_create_deposit_address(customer_id, chain, asset, counter, &derive, now_ms).await {
                Ok(created) => return Ok(created),
                Err(TryCreate::Lost) => continue,
                Err(TryCreate::Other(e)) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "deposit address for {asset}: still contended after {DEPOSIT_ADDRESS_ATTEMPTS_MAX} attempts"
        ))
        .into())
    }

    async fn try_create_deposit_address<E: From<StoreError>>(
        &self,
        customer_id: &str,
        chain: &str,
        asset: &str,
        counter: &str,
        derive: &impl Fn(i64) -> std::result::Result<String, E>,
        now_ms: i64,
    ) -> std::result::Result<DepositAddressRow, TryCreate<E>> {
        let lost_or = |e: StoreError| match &e {
            StoreError::Db(db) if is_unique_violation(db) => TryCreate::Lost,
            _ => TryCreate::Other(E::from(e)),
        };
        let mut tx = self.begin_write().await.map_err(lost_or)?;
        let q =
            format!("SELECT {DEPOSIT_ADDRESS_COLUMNS} FROM deposit_addresses WHERE customer_id = $1 AND asset = $2");
        let row = sqlx::query(crate::sql(q))
            .bind(customer_id)
            .bind(asset)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| lost_or(e.into()))?;
        if let Some(r) = row {
            return deposit_address_from_row(&r).map_err(lost_or);
        }
        let index = self.next_counter(&mut tx, counter).await.map_err(lost_or)?;
        let address = derive(index).map_err(TryCreate::Other)?;
        let created = DepositAddressRow {
            address,
            chain: chain.to_string(),
            asset: asset.to_string(),
            customer_id: customer_id.to_string(),
            derivation_index: index,
            created_at_ms: now_ms,
        };
        sqlx::query(
            "INSERT INTO deposit_addresses (address, chain, asset, customer_id, derivation_index, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&created.address)
        .bind(&created.chain)
        .bind(&created.asset)
        .bind(&created.customer_id)
        .bind(created.derivation_index)
        .bind(created.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| lost_or(e.into()))?;
        tx.commit().await.map_err(|e| lost_or(e.into()))?;
        Ok(created)
    }
}

/// Bound on retries when concurrent first requests for deposit addresses collide (PostgreSQL).
pub const DEPOSIT_ADDRESS_ATTEMPTS_MAX: u32 = 3;

enum TryCreate<E> {
    /// A concurrent transaction won a unique constraint; read again.
    Lost,
    Other(E),
}
