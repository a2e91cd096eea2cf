//! The signer's own operator registry log (K8, O3, O4): plain, append-only storage. The signer
//! (kinko-signer) verifies every change and its signatures before appending and again when it replays the
//! rows at startup; this module only keeps them in `seq` order and never overwrites one.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// One row of `signer_registry_log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerRegistryRow {
    pub seq: i64,
    /// Lower-case hex SHA-256 of the change's canonical encoding.
    pub hash_hex: String,
    pub change_json: String,
    pub approvals_json: String,
    pub applied_at_ms: i64,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Appends the change at `seq`. A `seq` already taken is [`StoreError::Conflict`]: the existing row is
    /// kept as it is, whatever the new one says.
    pub async fn append_signer_registry(
        &self,
        seq: u64,
        hash_hex: &str,
        change_json: &str,
        approvals_json: &str,
        now_ms: i64,
    ) -> Result<()> {
        let seq = i64::try_from(seq).map_err(|_| StoreError::Conflict(format!("registry seq {seq} out of range")))?;
        let done = sqlx::query(
            "INSERT INTO signer_registry_log (seq, hash, change_json, approvals_json, applied_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(seq)
        .bind(hash_hex)
        .bind(change_json)
        .bind(approvals_json)
        .bind(now_ms)
        .execute(self.pool())
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("signer registry position {seq} is already taken")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The whole log, in `seq` order.
    pub async fn signer_registry_log(&self) -> Result<Vec<SignerRegistryRow>> {
        let rows = sqlx::query(
            "SELECT seq, hash, change_json, approvals_json, applied_at_ms FROM signer_registry_log ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SignerRegistryRow {
                    seq: r.try_get("seq")?,
                    hash_hex: r.try_get("hash")?,
                    change_json: r.try_get("change_json")?,
                    approvals_json: r.try_get("approvals_json")?,
                    applied_at_ms: r.try_get("applied_at_ms")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::StoreError;
    use crate::testing::test_stores;

    #[tokio::test]
    async fn o3_signer_registry_appends_in_order_and_never_overwrites() {
        for ts in test_stores().await {
            let s = &ts.store;
            assert!(s.signer_registry_log().await.unwrap().is_empty(), "{}", ts.name);
            s.append_signer_registry(1, "bb", "{\"c\":1}", "[]", 20).await.unwrap();
            s.append_signer_registry(0, "aa", "{\"c\":0}", "[{\"a\":0}]", 10).await.unwrap();
            let got = s.append_signer_registry(1, "cc", "{\"evil\":1}", "[]", 30).await;
            assert!(
                matches!(got, Err(StoreError::Conflict(ref m)) if m.contains("position 1")),
                "{}: {got:?}",
                ts.name
            );
            let log = s.signer_registry_log().await.unwrap();
            assert_eq!(log.len(), 2, "{}", ts.name);
            assert_eq!((log[0].seq, log[0].hash_hex.as_str(), log[0].applied_at_ms), (0, "aa", 10), "{}", ts.name);
            assert_eq!(log[0].approvals_json, "[{\"a\":0}]", "{}", ts.name);
            assert_eq!((log[1].seq, log[1].hash_hex.as_str(), log[1].change_json.as_str()), (1, "bb", "{\"c\":1}"));
        }
    }
}
