//! Node-monitor verdicts (C6, C7, C10), maintenance windows (S4) and the read-only aggregates the metrics
//! export: withdrawals per state, the watcher's scanned height.
//!
//! A verdict change (healthy → halted, halted → healthy) is written in one transaction with its ops event
//! and its alert notice, so an alert exists exactly when the change was recorded, and only once per change
//! however many monitors poll.

use kinko_core::node_health::{Transition, transition};
use sqlx::Row;

use crate::notices::NewNotice;
use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, sql};

/// Bound on the windows one listing returns.
pub const WINDOWS_LIST_MAX: i64 = 200;
/// Bound on the not-yet-ended windows that may exist at once (announcements are few; this stops a
/// runaway script from filling the table).
pub const WINDOWS_OPEN_MAX: i64 = 100;

/// The stored verdict on one component (`nodes:eth`, `signer`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheckRow {
    pub component: String,
    pub healthy: bool,
    pub reasons_json: String,
    pub since_ms: i64,
    pub checked_at_ms: i64,
    /// The verdict vouches for the component until then.
    pub valid_until_ms: i64,
    pub checked_by: String,
}

/// A verdict to record.
#[derive(Clone, Debug)]
pub struct NewHealthCheck<'a> {
    pub component: &'a str,
    pub healthy: bool,
    pub reasons_json: &'a str,
    pub checked_by: &'a str,
    pub now_ms: i64,
    /// Until when this verdict vouches for the component (the monitor's staleness bound).
    pub valid_until_ms: i64,
}

/// What to write with a verdict change: the ops event and the alert notice.
#[derive(Clone, Debug, Default)]
pub struct HealthAlert {
    pub event: Option<NewOpsEvent>,
    pub notice: Option<NewNotice>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceWindowRow {
    pub id: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub message: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub cancelled_by: Option<String>,
    pub cancelled_at_ms: Option<i64>,
}

const HEALTH_COLUMNS: &str = "component, healthy, reasons_json, since_ms, checked_at_ms, valid_until_ms, checked_by";
const WINDOW_COLUMNS: &str =
    "id, starts_at_ms, ends_at_ms, message, created_by, created_at_ms, cancelled_by, cancelled_at_ms";

fn health_from_row(r: &sqlx::any::AnyRow) -> Result<HealthCheckRow> {
    let healthy: i64 = r.try_get("healthy")?;
    Ok(HealthCheckRow {
        component: r.try_get("component")?,
        healthy: healthy != 0,
        reasons_json: r.try_get("reasons_json")?,
        since_ms: r.try_get("since_ms")?,
        checked_at_ms: r.try_get("checked_at_ms")?,
        valid_until_ms: r.try_get("valid_until_ms")?,
        checked_by: r.try_get("checked_by")?,
    })
}

fn window_from_row(r: &sqlx::any::AnyRow) -> Result<MaintenanceWindowRow> {
    Ok(MaintenanceWindowRow {
        id: r.try_get("id")?,
        starts_at_ms: r.try_get("starts_at_ms")?,
        ends_at_ms: r.try_get("ends_at_ms")?,
        message: r.try_get("message")?,
        created_by: r.try_get("created_by")?,
        created_at_ms: r.try_get("created_at_ms")?,
        cancelled_by: r.try_get("cancelled_by")?,
        cancelled_at_ms: r.try_get("cancelled_at_ms")?,
    })
}

impl Store {
    /// The stored verdict on `component`, if any monitor has written one.
    pub async fn health_check(&self, component: &str) -> Result<Option<HealthCheckRow>> {
        let q = format!("SELECT {HEALTH_COLUMNS} FROM health_checks WHERE component = $1");
        let row = sqlx::query(sql(q)).bind(component).fetch_optional(self.pool()).await?;
        row.as_ref().map(health_from_row).transpose()
    }

    /// Every stored verdict, by component.
    pub async fn health_checks(&self) -> Result<Vec<HealthCheckRow>> {
        let q = format!("SELECT {HEALTH_COLUMNS} FROM health_checks ORDER BY component");
        let rows = sqlx::query(sql(q)).fetch_all(self.pool()).await?;
        rows.iter().map(health_from_row).collect()
    }

    /// Records a verdict. On a change (see [`kinko_core::node_health::transition`]) `alert` is asked what to
    /// write with it — given the change and the previous row — and its event and notice are written in the
    /// same transaction: if either write fails, the verdict is not recorded either, and the next poll tries
    /// again. Returns the change.
    pub async fn record_health_check(
        &self,
        check: &NewHealthCheck<'_>,
        alert: impl FnOnce(Transition, Option<&HealthCheckRow>) -> HealthAlert,
    ) -> Result<Transition> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {HEALTH_COLUMNS} FROM health_checks WHERE component = $1{}", self.for_update());
        let previous = sqlx::query(sql(q)).bind(check.component).fetch_optional(&mut *tx).await?;
        let previous = previous.as_ref().map(health_from_row).transpose()?;
        let change = transition(previous.as_ref().map(|p| p.healthy), check.healthy);
        let since_ms = match &previous {
            Some(p) if p.healthy == check.healthy => p.since_ms,
            _ => check.now_ms,
        };
        if previous.is_some() {
            sqlx::query(
                "UPDATE health_checks SET healthy = $1, reasons_json = $2, since_ms = $3, checked_at_ms = $4, \
                 checked_by = $5, valid_until_ms = $7 WHERE component = $6",
            )
            .bind(i64::from(check.healthy))
            .bind(check.reasons_json)
            .bind(since_ms)
            .bind(check.now_ms)
            .bind(check.checked_by)
            .bind(check.component)
            .bind(check.valid_until_ms)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO health_checks (component, healthy, reasons_json, since_ms, checked_at_ms, checked_by, \
                 valid_until_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(check.component)
            .bind(i64::from(check.healthy))
            .bind(check.reasons_json)
            .bind(since_ms)
            .bind(check.now_ms)
            .bind(check.checked_by)
            .bind(check.valid_until_ms)
            .execute(&mut *tx)
            .await?;
        }
        if change != Transition::Unchanged {
            let HealthAlert { event, notice } = alert(change, previous.as_ref());
            if let Some(e) = event {
                append_ops_event_tx(&mut tx, &e).await?;
            }
            if let Some(n) = notice {
                self.enqueue_notice_tx(&mut tx, &n).await?;
            }
        }
        tx.commit().await?;
        Ok(change)
    }

    /// Stores an announced window and its ops event in one transaction. Refused (`Conflict`) when
    /// [`WINDOWS_OPEN_MAX`] windows that have not ended exist already.
    pub async fn insert_maintenance_window(&self, w: &MaintenanceWindowRow, event: &NewOpsEvent) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM maintenance_windows WHERE ends_at_ms > $1 AND cancelled_at_ms IS NULL",
        )
        .bind(w.created_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        if open >= WINDOWS_OPEN_MAX {
            return Err(StoreError::Conflict(format!("at most {WINDOWS_OPEN_MAX} windows may be announced at once")));
        }
        sqlx::query(
            "INSERT INTO maintenance_windows (id, starts_at_ms, ends_at_ms, message, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&w.id)
        .bind(w.starts_at_ms)
        .bind(w.ends_at_ms)
        .bind(&w.message)
        .bind(&w.created_by)
        .bind(w.created_at_ms)
        .execute(&mut *tx)
        .await?;
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Cancels a window that has not ended and is not cancelled, with its ops event. `NotFound` for an
    /// unknown id; `Conflict` for a window already cancelled or over.
    pub async fn cancel_maintenance_window(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
        event: &NewOpsEvent,
    ) -> Result<MaintenanceWindowRow> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WINDOW_COLUMNS} FROM maintenance_windows WHERE id = $1{}", self.for_update());
        let row = sqlx::query(sql(q)).bind(id).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound)?;
        let mut w = window_from_row(&row)?;
        if w.cancelled_at_ms.is_some() {
            return Err(StoreError::Conflict("the window is already cancelled".into()));
        }
        if w.ends_at_ms <= now_ms {
            return Err(StoreError::Conflict("the window is over".into()));
        }
        sqlx::query("UPDATE maintenance_windows SET cancelled_by = $1, cancelled_at_ms = $2 WHERE id = $3")
            .bind(by)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        w.cancelled_by = Some(by.into());
        w.cancelled_at_ms = Some(now_ms);
        Ok(w)
    }

    /// Windows not cancelled that have not ended at `now_ms` (current and announced), soonest first.
    pub async fn upcoming_maintenance_windows(&self, now_ms: i64) -> Result<Vec<MaintenanceWindowRow>> {
        let q = format!(
            "SELECT {WINDOW_COLUMNS} FROM maintenance_windows WHERE ends_at_ms > $1 AND cancelled_at_ms IS NULL \
             ORDER BY starts_at_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sql(q)).bind(now_ms).bind(WINDOWS_LIST_MAX).fetch_all(self.pool()).await?;
        rows.iter().map(window_from_row).collect()
    }

    /// Every window (cancelled and past ones too), newest first, at most [`WINDOWS_LIST_MAX`].
    pub async fn maintenance_windows(&self) -> Result<Vec<MaintenanceWindowRow>> {
        let q = format!("SELECT {WINDOW_COLUMNS} FROM maintenance_windows ORDER BY starts_at_ms DESC, id LIMIT $1");
        let rows = sqlx::query(sql(q)).bind(WINDOWS_LIST_MAX).fetch_all(self.pool()).await?;
        rows.iter().map(window_from_row).collect()
    }

    /// The window in force at `now_ms`, if any (the one ending last when several overlap).
    pub async fn current_maintenance_window(&self, now_ms: i64) -> Result<Option<MaintenanceWindowRow>> {
        let q = format!(
            "SELECT {WINDOW_COLUMNS} FROM maintenance_windows WHERE starts_at_ms <= $1 AND ends_at_ms > $1 \
             AND cancelled_at_ms IS NULL ORDER BY ends_at_ms DESC, id LIMIT 1"
        );
        let row = sqlx::query(sql(q)).bind(now_ms).fetch_optional(self.pool()).await?;
        row.as_ref().map(window_from_row).transpose()
    }

    /// Withdrawals per status (every kind), for the metrics.
    pub async fn withdrawal_counts_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM withdrawals GROUP BY status ORDER BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
    }

    /// The highest block deposit detection has processed on `chain` (its verified tip), if any.
    pub async fn scanned_height(&self, chain: &str) -> Result<Option<u64>> {
        let n: Option<i64> = sqlx::query_scalar("SELECT MAX(number) FROM chain_blocks WHERE chain = $1")
            .bind(chain)
            .fetch_one(self.pool())
            .await?;
        n.map(|n| u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("chain_blocks.number {n} is negative"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_stores;

    fn event(name: &str) -> NewOpsEvent {
        NewOpsEvent {
            operator_id: "system".into(),
            terminal: "server".into(),
            event: name.into(),
            request_id: None,
            detail_json: "{}".into(),
            at_ms: 1,
        }
    }

    /// C10: the verdict change is recorded once with its alert; repeated polls in the same state add nothing.
    #[tokio::test]
    async fn c10_verdict_change_writes_its_event_once() {
        for ts in test_stores().await {
            let s = &ts.store;
            let check = |healthy, now_ms| NewHealthCheck {
                component: "nodes:eth",
                healthy,
                reasons_json: "[]",
                checked_by: "t",
                now_ms,
                valid_until_ms: now_ms + 100,
            };
            let alert = |t: Transition, _: Option<&HealthCheckRow>| HealthAlert {
                event: Some(event(if t == Transition::Halted { "nodes_halted" } else { "nodes_resumed" })),
                notice: None,
            };
            assert_eq!(s.record_health_check(&check(true, 10), alert).await.unwrap(), Transition::Unchanged);
            assert_eq!(s.record_health_check(&check(false, 20), alert).await.unwrap(), Transition::Halted);
            assert_eq!(s.record_health_check(&check(false, 30), alert).await.unwrap(), Transition::Unchanged);
            let row = s.health_check("nodes:eth").await.unwrap().unwrap();
            assert_eq!((row.healthy, row.since_ms, row.checked_at_ms), (false, 20, 30));
            assert_eq!(s.record_health_check(&check(true, 40), alert).await.unwrap(), Transition::Resumed);
            let events: Vec<_> = s.ops_events(None, 100).await.unwrap().into_iter().map(|e| e.event).collect();
            assert_eq!(events, ["nodes_halted", "nodes_resumed"], "{}", ts.name);
        }
    }

    /// S4: windows are listed, found while in force, cancelled once.
    #[tokio::test]
    async fn s4_windows_current_upcoming_and_cancelled() {
        for ts in test_stores().await {
            let s = &ts.store;
            let w = MaintenanceWindowRow {
                id: "w1".into(),
                starts_at_ms: 100,
                ends_at_ms: 200,
                message: "upgrade".into(),
                created_by: "om1".into(),
                created_at_ms: 50,
                cancelled_by: None,
                cancelled_at_ms: None,
            };
            s.insert_maintenance_window(&w, &event("maintenance_announced")).await.unwrap();
            assert_eq!(s.current_maintenance_window(99).await.unwrap(), None);
            assert_eq!(s.current_maintenance_window(100).await.unwrap().unwrap().id, "w1");
            assert_eq!(s.current_maintenance_window(200).await.unwrap(), None, "the end is exclusive");
            assert_eq!(s.upcoming_maintenance_windows(60).await.unwrap().len(), 1);
            let c = s.cancel_maintenance_window("w1", "om2", 70, &event("maintenance_cancelled")).await.unwrap();
            assert_eq!(c.cancelled_by.as_deref(), Some("om2"));
            assert!(matches!(
                s.cancel_maintenance_window("w1", "om2", 71, &event("x")).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                s.cancel_maintenance_window("nope", "om2", 71, &event("x")).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(s.current_maintenance_window(150).await.unwrap(), None, "{}", ts.name);
            assert_eq!(s.maintenance_windows().await.unwrap().len(), 1);
        }
    }
}
