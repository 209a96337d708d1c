//! The audit log: every management action and every denial, with who did it (the key id, never
//! the key), the tenant, the action, its target, when, and the outcome.
//!
//! Append-only: rows live in the `audit` table of the metadata database, whose triggers refuse
//! every UPDATE and DELETE. Owners read their tenant's entries and the admin reads any tenant's
//! (`GET /v1/audit`).

use rusqlite::params;
use serde::Serialize;

use crate::db::Db;

/// One audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Position in the log (increasing); `after=` pages on it.
    pub seq: i64,
    pub time: String,
    /// The key id that acted (`admin` for the platform admin key, `anonymous` without a key).
    pub actor: String,
    pub tenant: Option<String>,
    /// What was done: `tenant.create`, `key.create`, `key.revoke`, `function.deploy`,
    /// `function.delete`, `model.push`, `model.delete`, a request (`POST /v1/...`) for others,
    /// or the capability a guest was denied (`deny:models`, `deny:gpu`, `deny:wasi-nn`).
    pub action: String,
    pub target: Option<String>,
    /// `ok`, `denied`, or `failed <status>`.
    pub outcome: String,
    pub detail: Option<String>,
}

/// The audit log.
#[derive(Clone)]
pub struct Audit {
    db: Db,
    /// Requests refused for a key that is no key (unknown, revoked, expired): anyone can send
    /// them, so at most one entry per [`UNKNOWN_KEY_INTERVAL`] is written, naming how many
    /// were refused since the last (all are counted in `infercell_unauthenticated_total`).
    unknown_keys: std::sync::Arc<std::sync::Mutex<Sampled>>,
}

/// At most one audit entry per this long for requests with an unknown key.
pub const UNKNOWN_KEY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Sampled {
    last: Option<std::time::Instant>,
    /// Refused since the last entry, not written.
    skipped: u64,
}

impl Audit {
    pub fn new(db: Db) -> Self {
        Self { db, unknown_keys: Default::default() }
    }

    /// Whether a request refused for an unknown key gets an entry now: `Some(n)`, with the
    /// `n` refused since the last entry that were not written; `None` (counted) otherwise.
    pub fn sample_unknown_key(&self) -> Option<u64> {
        let mut sampled = self.unknown_keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if sampled.last.is_some_and(|last| now.duration_since(last) < UNKNOWN_KEY_INTERVAL) {
            sampled.skipped += 1;
            return None;
        }
        sampled.last = Some(now);
        Some(std::mem::take(&mut sampled.skipped))
    }

    /// Appends an entry (its `seq` and `time` are assigned here). A failure to write is logged,
    /// never hidden: the action itself already happened.
    pub async fn record(&self, mut entry: Entry) {
        entry.time = crate::clock::now_rfc3339();
        let result = self
            .db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO audit (time, actor, tenant, action, target, outcome, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        entry.time,
                        entry.actor,
                        entry.tenant,
                        entry.action,
                        entry.target,
                        entry.outcome,
                        entry.detail
                    ],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "could not write the audit log");
        }
    }

    /// Entries after `after` (all tenants when `tenant` is None), oldest first, at most `limit`.
    pub async fn list(&self, tenant: Option<&str>, after: i64, limit: u32) -> anyhow::Result<Vec<Entry>> {
        let tenant = tenant.map(str::to_string);
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT seq, time, actor, tenant, action, target, outcome, detail FROM audit
                     WHERE (?1 IS NULL OR tenant = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![tenant, after, limit], |r| {
                    Ok(Entry {
                        seq: r.get(0)?,
                        time: r.get(1)?,
                        actor: r.get(2)?,
                        tenant: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        outcome: r.get(6)?,
                        detail: r.get(7)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

/// An entry to fill in (`seq` and `time` are set when it is written).
pub fn entry(actor: &str, tenant: Option<&str>, action: &str, target: Option<&str>, outcome: &str) -> Entry {
    Entry {
        seq: 0,
        time: String::new(),
        actor: actor.to_string(),
        tenant: tenant.map(str::to_string),
        action: action.to_string(),
        target: target.map(str::to_string),
        outcome: outcome.to_string(),
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn entries_append_and_cannot_be_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("infercell.db")).unwrap();
        let audit = Audit::new(db.clone());
        audit.record(entry("k1", Some("acme"), "key.revoke", Some("k2"), "ok")).await;
        audit.record(entry("k3", Some("other"), "function.deploy", Some("echo"), "ok")).await;
        let acme = audit.list(Some("acme"), 0, 100).await.unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!(acme[0].action, "key.revoke");
        assert_eq!(audit.list(None, acme[0].seq, 100).await.unwrap().len(), 1);
        for sql in ["UPDATE audit SET outcome = 'ok'", "DELETE FROM audit"] {
            let err = db.call_blocking(|conn| Ok(conn.execute(sql, [])?)).unwrap_err();
            assert!(format!("{err:#}").contains("append-only"), "{err:#}");
        }
        assert_eq!(audit.list(None, 0, 100).await.unwrap().len(), 2);
    }
}
