//! The metadata database: one SQLite file in the data directory, in WAL mode.
//!
//! SQLite opens its file by path (it cannot go through cap-std); it is the one file of the
//! data directory that is not reached through a capability handle. Writes use
//! `synchronous = FULL`, so an acknowledged metadata change survives `kill -9` and power loss.
//! Calls run on the blocking pool behind one connection: metadata traffic is small, and the
//! hot path (keys, deployed versions) is served from memory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::Connection;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE functions (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    manifest TEXT NOT NULL,
    imports TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT,
    PRIMARY KEY (tenant, name, version)
);
"#,
    r#"
CREATE TABLE models (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    size INTEGER NOT NULL,
    engine TEXT NOT NULL,
    device TEXT NOT NULL,
    description TEXT,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT,
    PRIMARY KEY (tenant, name, version)
);
"#,
    // Keys: when each was last used (written back from memory at most once a minute).
    // The audit log: every management action and every denial, append-only (triggers refuse
    // updates and deletes, so not even a bug in this program can rewrite history).
    r#"
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_by_tenant ON audit (tenant, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // Tenant files (`PUT /v1/files/{name}`); their bytes live in files/<tenant>/<name>.
    r#"
CREATE TABLE files (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
"#,
    // Tenant secrets, sealed (XChaCha20-Poly1305) under a key kept outside this database.
    r#"
CREATE TABLE secrets (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
"#,
    // Platform keys: made by the admin for machines that serve the whole platform (a metrics
    // scraper), belonging to no tenant.
    r#"
CREATE TABLE platform_keys (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT
);
"#,
    // Releases: which version answers a function's (or model's) bare name, with its canary,
    // mirror and aliases (one JSON value), and every change to it.
    r#"
CREATE TABLE releases (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    release TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, name)
);
CREATE TABLE release_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX release_history_by_name ON release_history (tenant, kind, name, seq);
"#,
    // A function version's smoke tests (`[[smoke]]`), run at upload: the report, as JSON.
    r#"
ALTER TABLE functions ADD COLUMN smoke TEXT;
"#,
    // The model version each granted model name resolved to when the function version was
    // deployed (JSON: name -> "3", "@alias" or "current"); NULL for older versions.
    r#"
ALTER TABLE functions ADD COLUMN model_pins TEXT;
"#,
];

/// A shared handle to the metadata database.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, MIGRATIONS, "FULL")
    }

    /// Opens a database at `path` with its own migrations and `synchronous` setting.
    pub fn open_with(path: &Path, migrations: &[&str], synchronous: &str) -> anyhow::Result<Self> {
        let mut conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, migrations)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .context("database task failed")?
    }

    /// Runs `f` with the connection on the current thread (start-up and tests).
    pub fn call_blocking<R>(&self, f: impl FnOnce(&mut Connection) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let mut guard = self.conn.lock().map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
        f(&mut guard)
    }
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> anyhow::Result<()> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    anyhow::ensure!(
        done <= migrations.len(),
        "the database was written by a newer infercell (schema {done}, this build knows {})",
        migrations.len()
    );
    for (i, sql) in migrations.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).with_context(|| format!("migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Inside a transaction that is about to add a version of `tenant`'s `name` to `table`
/// (`functions` or `models`): records the blob it points to and returns the next version
/// number. Versions of deleted rows count, so numbers are never reused.
pub fn next_version(
    tx: &rusqlite::Transaction<'_>,
    table: &'static str,
    tenant: &str,
    name: &str,
    digest: &str,
    size: u64,
    created_at: &str,
) -> rusqlite::Result<u32> {
    tx.execute(
        "INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3)",
        rusqlite::params![digest, size, created_at],
    )?;
    tx.query_row(
        &format!("SELECT COALESCE(MAX(version), 0) + 1 FROM {table} WHERE tenant = ?1 AND name = ?2"),
        rusqlite::params![tenant, name],
        |row| row.get(0),
    )
}

/// Why storing one more version of `tenant`'s `name` in `table` (`functions` or `models`),
/// of `size` bytes, would pass the tenant's plan, or `None` when it fits. Counts live rows only
/// (deleted versions free their room); bytes are those of every live function and model version
/// and file.
pub fn over_quota(
    tx: &rusqlite::Transaction<'_>,
    table: &'static str,
    tenant: &str,
    name: &str,
    size: u64,
    plan_name: &str,
    plan: &crate::config::Plan,
) -> rusqlite::Result<Option<String>> {
    let (kind, max_names, key) = match table {
        "functions" => ("functions", plan.max_functions, "max_functions"),
        _ => ("models", plan.max_models, "max_models"),
    };
    let live = |sql: &str, args: &[&dyn rusqlite::ToSql]| tx.query_row(sql, args, |r| r.get::<_, i64>(0));
    let versions = live(
        &format!("SELECT COUNT(*) FROM {table} WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL"),
        &[&tenant, &name],
    )? as u64;
    if versions == 0 {
        let names = live(
            &format!("SELECT COUNT(DISTINCT name) FROM {table} WHERE tenant = ?1 AND deleted_at IS NULL"),
            &[&tenant],
        )? as u64;
        if names >= max_names {
            return Ok(Some(format!(
                "tenant `{tenant}` has {names} {kind}, the most the `{plan_name}` plan allows ({key} = {max_names}): delete one first"
            )));
        }
    } else if versions >= plan.max_versions {
        return Ok(Some(format!(
            "`{name}` has {versions} live versions, the most the `{plan_name}` plan allows (max_versions = {}): delete it first (its name and version numbers stay reserved)",
            plan.max_versions
        )));
    }
    let used = stored_bytes(tx, tenant)?;
    if used.saturating_add(size) > plan.max_storage_bytes {
        return Ok(Some(storage_full(tenant, used, size, plan_name, plan.max_storage_bytes)));
    }
    Ok(None)
}

/// Bytes of every live function version, model version and file of `tenant`.
pub fn stored_bytes(conn: &Connection, tenant: &str) -> rusqlite::Result<u64> {
    let bytes: i64 = conn.query_row(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM functions WHERE tenant = ?1 AND deleted_at IS NULL)
              + (SELECT COALESCE(SUM(size), 0) FROM models WHERE tenant = ?1 AND deleted_at IS NULL)
              + (SELECT COALESCE(SUM(size), 0) FROM files WHERE tenant = ?1)",
        [tenant],
        |r| r.get(0),
    )?;
    Ok(bytes.max(0) as u64)
}

/// The refusal of an upload that would pass the tenant's bytes.
pub fn storage_full(tenant: &str, used: u64, adding: u64, plan_name: &str, max: u64) -> String {
    format!(
        "tenant `{tenant}` stores {used} bytes; {adding} more would pass the `{plan_name}` plan's max_storage_bytes of {max}: delete something first"
    )
}

/// Marks every live version of `tenant`'s `name` in `table` (`functions` or `models`) deleted;
/// returns how many, and the digests they named. Rows stay, so version numbers are never reused.
pub async fn soft_delete(db: &Db, table: &'static str, tenant: &str, name: &str) -> anyhow::Result<(u32, Vec<String>)> {
    let (t, n) = (tenant.to_string(), name.to_string());
    db.call(move |conn| {
        let tx = conn.transaction()?;
        let digests = {
            let mut stmt = tx.prepare(&format!(
                "SELECT DISTINCT digest FROM {table} WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL"
            ))?;
            let rows = stmt.query_map(rusqlite::params![t, n], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let deleted = tx.execute(
            &format!("UPDATE {table} SET deleted_at = ?3 WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL"),
            rusqlite::params![t, n, crate::clock::now_rfc3339()],
        )? as u32;
        tx.commit()?;
        Ok((deleted, digests))
    })
    .await
}

/// Those of `digests` that no live function or model version (of any tenant) names.
pub fn unreferenced(conn: &Connection, digests: &[String]) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM functions WHERE digest = ?1 AND deleted_at IS NULL)
             OR EXISTS (SELECT 1 FROM models WHERE digest = ?1 AND deleted_at IS NULL)",
    )?;
    let mut out = Vec::new();
    for digest in digests {
        if !stmt.query_row([digest], |r| r.get::<_, bool>(0))? {
            out.push(digest.clone());
        }
    }
    Ok(out)
}
