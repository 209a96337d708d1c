//! Tenant secrets (`PUT /v1/secrets/{name}`): values a function is granted by name
//! (`capabilities.secrets`) and reads through `infercell:function/config`, like a config value.
//!
//! At rest a secret is sealed with XChaCha20-Poly1305 under a key that is not in the database:
//! `INFERCELL_SECRETS_KEY` (64 hex digits) or the 0600 file `secrets.key` in the data
//! directory, made on first start. Each value has its own random 192-bit nonce, and the tenant
//! and name are its associated data, so a sealed value moved to another row does not open. No
//! API returns a value; the function's log shows `[redacted]` wherever a granted value appears.

use std::path::Path;

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use super::RegistryError;
use crate::db::Db;

/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: String,
}

/// The tenants' sealed secrets.
pub struct SecretStore {
    db: Db,
    cipher: XChaCha20Poly1305,
}

fn associated(tenant: &str, name: &str) -> Vec<u8> {
    format!("infercell-secret\0{tenant}\0{name}").into_bytes()
}

impl SecretStore {
    /// Opens the store with the key from `from_env`, else `data_dir/secrets.key` (made, mode
    /// 0600, when missing).
    pub fn open(db: Db, data_dir: &Path, from_env: Option<String>) -> anyhow::Result<Self> {
        let hex_key = match from_env.filter(|k| !k.is_empty()) {
            Some(key) => key,
            None => {
                let path = data_dir.join("secrets.key");
                match std::fs::read_to_string(&path) {
                    Ok(key) => key.trim().to_string(),
                    Err(_) => {
                        let mut key = [0u8; 32];
                        rand::rng().fill_bytes(&mut key);
                        let key = hex::encode(key);
                        crate::disk::write_private(&path, &key)?;
                        key
                    }
                }
            }
        };
        let key = hex::decode(hex_key.trim()).context("the secrets key is not hex")?;
        anyhow::ensure!(key.len() == 32, "the secrets key must be 32 bytes (64 hex digits), got {}", key.len());
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|e| anyhow::anyhow!("secrets key: {e}"))?;
        Ok(Self { db, cipher })
    }

    /// Seals and stores `value` as the tenant's secret `name`, replacing it.
    pub async fn put(&self, tenant: &str, name: &str, value: &[u8]) -> Result<SecretInfo, RegistryError> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(RegistryError::TooLarge(format!("a secret may hold at most {MAX_SECRET_BYTES} bytes")));
        }
        if std::str::from_utf8(value).is_err() {
            return Err(RegistryError::Invalid("a secret must be UTF-8 text (functions read it as a string)".into()));
        }
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad: &associated(tenant, name) })
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        let info = SecretInfo { name: name.to_string(), updated_at: crate::clock::now_rfc3339() };
        let (t, i) = (tenant.to_string(), info.clone());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO secrets (tenant, name, nonce, sealed, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (tenant, name) DO UPDATE SET nonce = ?3, sealed = ?4, updated_at = ?5",
                    params![t, i.name, nonce.to_vec(), sealed, i.updated_at],
                )?;
                Ok(())
            })
            .await?;
        Ok(info)
    }

    /// The names of the tenant's secrets.
    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>, RegistryError> {
        let t = tenant.to_string();
        Ok(self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare("SELECT name, updated_at FROM secrets WHERE tenant = ?1 ORDER BY name")?;
                let rows = stmt.query_map([&t], |r| Ok(SecretInfo { name: r.get(0)?, updated_at: r.get(1)? }))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    /// Deletes the tenant's secret `name`; 404 when there is none.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), RegistryError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let deleted = self
            .db
            .call(move |conn| Ok(conn.execute("DELETE FROM secrets WHERE tenant = ?1 AND name = ?2", params![t, n])?))
            .await?;
        if deleted == 0 {
            return Err(RegistryError::NotFound { kind: "secret", name: name.to_string() });
        }
        Ok(())
    }

    /// The values of the named secrets that exist, opened: for a function granted them.
    pub async fn reveal(&self, tenant: &str, names: &[String]) -> Result<Vec<(String, String)>, RegistryError> {
        let mut out = Vec::new();
        for name in names {
            let (t, n) = (tenant.to_string(), name.clone());
            let row: Option<(Vec<u8>, Vec<u8>)> = self
                .db
                .call(move |conn| {
                    Ok(conn
                        .query_row(
                            "SELECT nonce, sealed FROM secrets WHERE tenant = ?1 AND name = ?2",
                            params![t, n],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?)
                })
                .await?;
            let Some((nonce, sealed)) = row else { continue };
            if nonce.len() != 24 {
                return Err(anyhow::anyhow!("secret `{name}` has a malformed nonce").into());
            }
            let value = self
                .cipher
                .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: &associated(tenant, name) })
                .map_err(|_| anyhow::anyhow!("secret `{name}` of `{tenant}` does not open with this server's key"))?;
            out.push((name.clone(), String::from_utf8(value).map_err(anyhow::Error::from)?));
        }
        Ok(out)
    }
}

/// `text` with every occurrence of a secret value (4 bytes or longer) replaced by `[redacted]`.
pub fn redact(text: &str, values: &[String]) -> String {
    values.iter().filter(|v| v.len() >= 4).fold(text.to_string(), |t, v| t.replace(v.as_str(), "[redacted]"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn sealed_values_open_only_in_their_row_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("infercell.db")).unwrap();
        db.call_blocking(|c| {
            Ok(c.execute_batch("INSERT INTO tenants VALUES ('acme', 'free', 'now'), ('other', 'free', 'now')")?)
        })
        .unwrap();
        let store = SecretStore::open(db.clone(), dir.path(), None).unwrap();
        store.put("acme", "token", b"s3cr3t-value").await.unwrap();
        let opened = store.reveal("acme", &["token".into(), "missing".into()]).await.unwrap();
        assert_eq!(opened, vec![("token".to_string(), "s3cr3t-value".to_string())]);
        // The plaintext is nowhere in the database file.
        let bytes = std::fs::read(dir.path().join("infercell.db")).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"s3cr3t-value"));
        // Moved to another tenant's row, it does not open.
        db.call_blocking(|c| Ok(c.execute("UPDATE secrets SET tenant = 'other'", [])?)).unwrap();
        assert!(store.reveal("other", &["token".into()]).await.is_err());
        // A server with another key cannot open it either.
        db.call_blocking(|c| Ok(c.execute("UPDATE secrets SET tenant = 'acme'", [])?)).unwrap();
        let stranger = SecretStore::open(db, dir.path(), Some("11".repeat(32))).unwrap();
        assert!(stranger.reveal("acme", &["token".into()]).await.is_err());
        assert_eq!(redact("token is s3cr3t-value!", &["s3cr3t-value".into(), "x".into()]), "token is [redacted]!");
    }
}
