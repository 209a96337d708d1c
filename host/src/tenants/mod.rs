//! Tenants, API keys and roles.
//!
//! A key is `ick_<id>_<secret>`: the id (public, shown in listings) finds the record, and the
//! sha256 of the whole key is compared in constant time with the stored hash. Only hashes are
//! stored. The platform admin key is not in the database at all: it comes from
//! `INFERCELL_ADMIN_KEY` or from a 0600 file in the data directory, and only its hash is kept
//! in memory. Keys are cached in memory so authenticating a call never touches SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rand::RngCore as _;
use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::db::Db;

/// What tenants and keys refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The key's role or kind may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("no key with id `{id}`")]
    NoKey { id: String },
    #[error("tenant `{name}` already exists")]
    Exists { name: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What a key may do. Tenant roles are scoped to one tenant; `Admin` manages the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Owner,
    Deployer,
    Invoker,
    Billing,
    /// A platform key's role: reads `GET /metrics`, nothing else.
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Deployer => "deployer",
            Role::Invoker => "invoker",
            Role::Billing => "billing",
            Role::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            "deployer" => Role::Deployer,
            "invoker" => Role::Invoker,
            "billing" => Role::Billing,
            "metrics" => Role::Metrics,
            _ => return None,
        })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    /// `None` for the platform admin.
    pub tenant: Option<String>,
    pub role: Role,
}

impl Principal {
    /// The caller's tenant, with the roles allowed for the action; 403 otherwise.
    pub fn tenant_with(&self, allowed: &[Role]) -> Result<&str, TenantError> {
        let Some(tenant) = self.tenant.as_deref() else {
            return Err(TenantError::Forbidden(match self.role {
                Role::Admin => "the admin key manages the platform; use a tenant's key for this".into(),
                role => format!("a platform key with role `{}` may only read /metrics", role.as_str()),
            }));
        };
        if !allowed.contains(&self.role) {
            return Err(TenantError::Forbidden(format!(
                "a key with role `{}` may not do this (allowed: {})",
                self.role.as_str(),
                allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(tenant)
    }

    /// `GET /metrics`: the admin, or a platform key with the `metrics` role.
    pub fn require_metrics(&self) -> Result<(), TenantError> {
        match (&self.tenant, self.role) {
            (None, Role::Admin | Role::Metrics) => Ok(()),
            _ => Err(TenantError::Forbidden(
                "/metrics needs the admin key or a platform key with the `metrics` role (POST /v1/keys with the admin key)"
                    .into(),
            )),
        }
    }

    pub fn require_admin(&self) -> Result<(), TenantError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(TenantError::Forbidden("only the platform admin key may do this".into()))
        }
    }
}

#[derive(Debug, Clone)]
struct KeyRecord {
    hash: [u8; 32],
    principal: Principal,
    /// Unix seconds after which the key is refused.
    expires_at: Option<i64>,
    /// Unix seconds of the last authenticated use, and of the last one written to SQLite.
    last_used: Arc<AtomicI64>,
    last_saved: Arc<AtomicI64>,
}

/// A key as listings show it: never the secret, nor its hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    /// The first characters of the key, to recognise it by.
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

use crate::clock::{rfc3339, unix_now};

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// A freshly made key: the secret is shown once and never stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub api_key: String,
    pub prefix: String,
    pub hash: String,
}

/// Makes a random key with a 96-bit id and a 160-bit secret.
pub fn generate_key() -> NewKey {
    let mut id = [0u8; 12];
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let api_key = format!("ick_{id}_{}", hex::encode(secret));
    let prefix = api_key[..12].to_string();
    let hash = hex::encode(Sha256::digest(api_key.as_bytes()));
    NewKey { id, api_key, prefix, hash }
}

fn key_id(api_key: &str) -> Option<&str> {
    let rest = api_key.strip_prefix("ick_")?;
    let (id, _secret) = rest.split_once('_')?;
    Some(id)
}

/// Whose keys: a tenant's (`api_keys`) or the platform's (`platform_keys`).
enum Scope {
    Tenant,
    Platform,
}

impl Scope {
    fn of(tenant: Option<&str>) -> Self {
        if tenant.is_some() { Scope::Tenant } else { Scope::Platform }
    }

    fn table(&self) -> &'static str {
        match self {
            Scope::Tenant => "api_keys",
            Scope::Platform => "platform_keys",
        }
    }
}

/// Tenants and keys, with an in-memory key cache in front of SQLite.
pub struct Tenants {
    db: Db,
    keys: RwLock<HashMap<String, KeyRecord>>,
    /// Tenant name -> plan name, so admission never touches SQLite.
    plans: RwLock<HashMap<String, String>>,
    admin_hash: [u8; 32],
}

/// A tenant row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tenant {
    pub name: String,
    pub plan: String,
    pub created_at: String,
}

impl Tenants {
    /// Loads every live key into memory.
    pub fn load(db: Db, admin_key: &str) -> anyhow::Result<Self> {
        let records = db.call_blocking(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, tenant, role, hash, expires_at, last_used_at FROM api_keys WHERE revoked_at IS NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut out = HashMap::new();
            for row in rows {
                let (id, tenant, role, hash, expires_at, last_used_at) = row?;
                let (Some(role), Ok(hash)) = (Role::parse(&role), hex::decode(&hash)) else { continue };
                let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else { continue };
                let last_used = last_used_at.as_deref().and_then(parse_time).unwrap_or(0);
                out.insert(
                    id.clone(),
                    KeyRecord {
                        hash,
                        principal: Principal { key_id: id, tenant: Some(tenant), role },
                        expires_at: expires_at.as_deref().and_then(parse_time),
                        last_used: Arc::new(AtomicI64::new(last_used)),
                        last_saved: Arc::new(AtomicI64::new(last_used)),
                    },
                );
            }
            let mut stmt = conn.prepare(
                "SELECT id, role, hash, expires_at, last_used_at FROM platform_keys WHERE revoked_at IS NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?;
            for row in rows {
                let (id, role, hash, expires_at, last_used_at) = row?;
                let (Some(role), Ok(hash)) = (Role::parse(&role), hex::decode(&hash)) else { continue };
                let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else { continue };
                let last_used = last_used_at.as_deref().and_then(parse_time).unwrap_or(0);
                out.insert(
                    id.clone(),
                    KeyRecord {
                        hash,
                        principal: Principal { key_id: id, tenant: None, role },
                        expires_at: expires_at.as_deref().and_then(parse_time),
                        last_used: Arc::new(AtomicI64::new(last_used)),
                        last_saved: Arc::new(AtomicI64::new(last_used)),
                    },
                );
            }
            Ok(out)
        })?;
        let plans = db.call_blocking(|conn| {
            let mut stmt = conn.prepare("SELECT name, plan FROM tenants")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
        })?;
        Ok(Self {
            db,
            keys: RwLock::new(records),
            plans: RwLock::new(plans),
            admin_hash: Sha256::digest(admin_key.as_bytes()).into(),
        })
    }

    /// Who holds `api_key`, if anyone.
    pub fn authenticate(&self, api_key: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        if bool::from(hash.ct_eq(&self.admin_hash)) {
            return Some(Principal { key_id: "admin".into(), tenant: None, role: Role::Admin });
        }
        let id = key_id(api_key)?;
        let keys = self.keys.read().ok()?;
        let record = keys.get(id)?;
        if !bool::from(record.hash.ct_eq(&hash)) {
            return None;
        }
        let now = unix_now();
        if record.expires_at.is_some_and(|t| now >= t) {
            return None;
        }
        record.last_used.store(now, Ordering::Relaxed);
        // Written back at most once a minute per key, off the request path.
        if now - record.last_saved.load(Ordering::Relaxed) >= 60 {
            record.last_saved.store(now, Ordering::Relaxed);
            let (db, id, at) = (self.db.clone(), id.to_string(), rfc3339(now));
            let table = Scope::of(record.principal.tenant.as_deref()).table();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = db
                        .call(move |conn| {
                            let sql = format!("UPDATE {table} SET last_used_at = ?1 WHERE id = ?2");
                            conn.execute(&sql, params![at, id])?;
                            Ok(())
                        })
                        .await;
                });
            }
        }
        Some(record.principal.clone())
    }

    /// Makes a key for `tenant` (`None`: a platform key) with `role`; the secret is in the
    /// result only.
    pub async fn create_key(
        &self,
        tenant: Option<&str>,
        role: Role,
        name: Option<String>,
        expires_at: Option<i64>,
    ) -> Result<(NewKey, KeyInfo), TenantError> {
        let key = generate_key();
        let info = KeyInfo {
            id: key.id.clone(),
            name,
            role,
            prefix: key.prefix.clone(),
            created_at: crate::clock::now_rfc3339(),
            expires_at: expires_at.and_then(rfc3339),
            last_used_at: None,
        };
        let (t, k, i) = (tenant.map(str::to_string), key.clone(), info.clone());
        self.db
            .call(move |conn| {
                match t {
                    Some(t) => conn.execute(
                        "INSERT INTO api_keys (id, tenant, role, hash, prefix, name, created_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![k.id, t, i.role.as_str(), k.hash, k.prefix, i.name, i.created_at, i.expires_at],
                    )?,
                    None => conn.execute(
                        "INSERT INTO platform_keys (id, role, hash, prefix, name, created_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![k.id, i.role.as_str(), k.hash, k.prefix, i.name, i.created_at, i.expires_at],
                    )?,
                };
                Ok(())
            })
            .await?;
        self.cache_key(&key, tenant, role, expires_at);
        Ok((key, info))
    }

    /// The tenant's live keys, oldest first.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>, TenantError> {
        let t = tenant.unwrap_or_default().to_string();
        let table = Scope::of(tenant).table();
        let mut keys = self
            .db
            .call(move |conn| {
                let owner = if table == "api_keys" { "tenant = ?1" } else { "?1 = ''" };
                let mut stmt = conn.prepare(&format!(
                    "SELECT id, name, role, prefix, created_at, expires_at, last_used_at FROM {table}
                     WHERE {owner} AND revoked_at IS NULL ORDER BY created_at, id"
                ))?;
                let rows = stmt.query_map([&t], |r| {
                    Ok(KeyInfo {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Invoker),
                        prefix: r.get(3)?,
                        created_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        last_used_at: r.get(6)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        // Uses since the last write-back are in memory.
        if let Ok(cache) = self.keys.read() {
            for key in &mut keys {
                if let Some(record) = cache.get(&key.id) {
                    let used = record.last_used.load(Ordering::Relaxed);
                    if used > 0 {
                        key.last_used_at = rfc3339(used);
                    }
                }
            }
        }
        Ok(keys)
    }

    /// Revokes one of the tenant's keys; it is refused from this moment on. 404 for an unknown
    /// key or another tenant's.
    pub async fn revoke_key(&self, tenant: Option<&str>, id: &str) -> Result<KeyInfo, TenantError> {
        let listed = self.list_keys(tenant).await?;
        let Some(info) = listed.into_iter().find(|k| k.id == id) else {
            return Err(TenantError::NoKey { id: id.to_string() });
        };
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(id);
        }
        let (t, i, now) = (tenant.unwrap_or_default().to_string(), id.to_string(), crate::clock::now_rfc3339());
        let table = Scope::of(tenant).table();
        self.db
            .call(move |conn| {
                let owner = if table == "api_keys" { "tenant = ?3" } else { "?3 = ''" };
                conn.execute(
                    &format!("UPDATE {table} SET revoked_at = ?1 WHERE id = ?2 AND {owner} AND revoked_at IS NULL"),
                    params![now, i, t],
                )?;
                Ok(())
            })
            .await?;
        Ok(info)
    }

    /// Creates a tenant and its first owner key.
    pub async fn create(&self, name: &str, plan: &str) -> Result<(Tenant, NewKey), TenantError> {
        let key = generate_key();
        let tenant = Tenant { name: name.to_string(), plan: plan.to_string(), created_at: crate::clock::now_rfc3339() };
        let (t, k) = (tenant.clone(), key.clone());
        let created = self
            .db
            .call(move |conn| {
                let tx = conn.transaction()?;
                let exists: Option<String> = tx
                    .query_row("SELECT name FROM tenants WHERE name = ?1", [&t.name], |r| r.get(0))
                    .optional()?;
                if exists.is_some() {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO tenants (name, plan, created_at) VALUES (?1, ?2, ?3)",
                    params![t.name, t.plan, t.created_at],
                )?;
                tx.execute(
                    "INSERT INTO api_keys (id, tenant, role, hash, prefix, name, created_at) VALUES (?1, ?2, 'owner', ?3, ?4, 'owner', ?5)",
                    params![k.id, t.name, k.hash, k.prefix, t.created_at],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if !created {
            return Err(TenantError::Exists { name: name.to_string() });
        }
        self.cache_key(&key, Some(name), Role::Owner, None);
        if let Ok(mut plans) = self.plans.write() {
            plans.insert(name.to_string(), plan.to_string());
        }
        Ok((tenant, key))
    }

    fn cache_key(&self, key: &NewKey, tenant: Option<&str>, role: Role, expires_at: Option<i64>) {
        let mut hash = [0u8; 32];
        if let Ok(bytes) = hex::decode(&key.hash) {
            hash.copy_from_slice(&bytes);
        }
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(
                key.id.clone(),
                KeyRecord {
                    hash,
                    principal: Principal { key_id: key.id.clone(), tenant: tenant.map(str::to_string), role },
                    expires_at,
                    last_used: Arc::new(AtomicI64::new(0)),
                    last_saved: Arc::new(AtomicI64::new(0)),
                },
            );
        }
    }

    /// The plan of `tenant`, from memory.
    pub fn plan_of(&self, tenant: &str) -> Option<String> {
        self.plans.read().ok()?.get(tenant).cloned()
    }

    /// One tenant by name.
    pub async fn get(&self, name: &str) -> Result<Option<Tenant>, TenantError> {
        let name = name.to_string();
        Ok(self
            .db
            .call(move |conn| {
                Ok(conn
                    .query_row("SELECT name, plan, created_at FROM tenants WHERE name = ?1", [&name], |r| {
                        Ok(Tenant { name: r.get(0)?, plan: r.get(1)?, created_at: r.get(2)? })
                    })
                    .optional()?)
            })
            .await?)
    }

    /// Every tenant.
    pub async fn list(&self) -> Result<Vec<Tenant>, TenantError> {
        Ok(self
            .db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT name, plan, created_at FROM tenants ORDER BY name")?;
                let rows =
                    stmt.query_map([], |r| Ok(Tenant { name: r.get(0)?, plan: r.get(1)?, created_at: r.get(2)? }))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }
}

/// The admin key: `INFERCELL_ADMIN_KEY`, else the key file in the data dir, else a new key
/// written there with mode 0600. Returns the key and, when it came from a file, the file's path.
pub fn admin_key(
    data_dir: &std::path::Path,
    from_env: Option<String>,
) -> anyhow::Result<(String, Option<std::path::PathBuf>, bool)> {
    if let Some(key) = from_env.filter(|k| !k.is_empty()) {
        return Ok((key, None, false));
    }
    let path = data_dir.join("admin.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok((key.trim().to_string(), Some(path), false));
    }
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("ica_{}", hex::encode(secret));
    crate::disk::write_private(&path, &key)?;
    Ok((key, Some(path), true))
}

/// Validates a tenant, function or model name: `^[a-z0-9][a-z0-9._-]{0,127}$`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["a", "echo", "my-fn_2.v1", "0abc", &"a".repeat(128)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Echo", "-a", ".a", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys_are_random_and_parse() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.api_key, b.api_key);
        assert_eq!(key_id(&a.api_key), Some(a.id.as_str()));
        assert!(a.api_key.len() >= 4 + 24 + 1 + 40);
    }
}
