//! The append-only audit trail: rows are only ever inserted (a trigger refuses updates, and
//! deletes of rows younger than 30 days).

use async_trait::async_trait;

use super::{AuditEvent, AuditStore, SqlStore, StoreError, db::with_db};

/// The insert of one audit event, as a query either backend runs.
macro_rules! insert {
    ($event:expr) => {{
        let event: &$crate::store::AuditEvent<'_> = &$event;
        sqlx::query(
            "INSERT INTO audit_events (at, event, outcome, user_id, email, client_addr, reason, \
             count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($crate::store::db::Ts(event.at))
        .bind(event.event)
        .bind(event.outcome)
        .bind(event.user_id)
        .bind(event.email)
        .bind(event.client)
        .bind(event.reason)
        .bind(i32::try_from(event.count).unwrap_or(i32::MAX))
    }};
}
pub(crate) use insert;

#[async_trait]
impl AuditStore for SqlStore {
    async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            self.conn.run("audit", insert!(event).execute(pool)).await?;
            Ok(())
        })
    }
}
