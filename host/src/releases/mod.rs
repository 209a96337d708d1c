//! Releases: which version of a function (or model) answers its bare name.
//!
//! A function has at most one release: a stable version, optionally a canary version taking a
//! percentage of the calls, optionally a mirror version that gets copies of a percentage of
//! them, and aliases (`prod`, `beta`) naming versions. Until a release is set the newest
//! version serves, as it always did; once set, a new upload serves only when released.
//!
//! Routing is in memory and takes one short lock per call: a call with an
//! `infercell-route-key` goes to the canary when the key's hash falls in the canary's share
//! (so one key keeps its version while the percentage holds, and moves to the canary at most
//! once, when a step covers it); a call without one takes the canary's exact share in turn.
//!
//! Every change is written to the database (the release row and a history event, in one
//! transaction) before it takes effect in memory, so a restart resumes exactly where the
//! server stood: a canary in progress goes on from its last percentage. A canary's health is
//! judged by [`Releases::judge`], once a second, per interval ([`health`]).

pub mod health;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::db::Db;
use crate::registry::RegistryError;
use health::Tally;

/// Request header: calls with the same key get the same version during a canary.
pub const ROUTE_KEY_HEADER: &str = "infercell-route-key";
/// Response header: the version that answered.
pub const VERSION_HEADER: &str = "infercell-version";
/// History events a status shows (the newest).
const HISTORY_SHOWN: u32 = 50;
/// History events kept per release (older ones are dropped; the audit log keeps every change).
const HISTORY_KEPT: u32 = 1000;
/// Aliases one function (or model) may have.
pub const MAX_ALIASES: usize = 100;

/// What a release is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Function,
    Model,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Function => "function",
            Subject::Model => "model",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "function" => Some(Subject::Function),
            "model" => Some(Subject::Model),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    Progressing,
    Promoted,
    RolledBack,
}

/// What a canary is asked to do (`release canary F N --percent P ...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanarySpec {
    pub version: u32,
    pub percent: u32,
    /// Added every healthy interval; none: the percentage holds until promoted or rolled back.
    pub step: Option<u32>,
    pub interval: Duration,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
}

impl CanarySpec {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;

    /// Refuses what cannot work: a share outside 1..=99, a step that never lands on 100%.
    pub fn check(&self) -> Result<(), RegistryError> {
        let invalid = |m: String| Err(RegistryError::Invalid(m));
        if !(1..=99).contains(&self.percent) {
            return invalid(format!(
                "a canary takes 1 to 99 percent of the calls, not {} (to release a version to every call: release set)",
                self.percent
            ));
        }
        if let Some(step) = self.step
            && (step == 0 || !(100 - self.percent).is_multiple_of(step))
        {
            let divisors: Vec<String> = (1..=100 - self.percent)
                .filter(|s| (100 - self.percent).is_multiple_of(*s))
                .map(|s| s.to_string())
                .collect();
            return invalid(format!(
                "a step of {step} from {}% never lands on 100%: the step must divide {} (one of {})",
                self.percent,
                100 - self.percent,
                divisors.join(", ")
            ));
        }
        if self.interval < Duration::from_secs(1) {
            return invalid("a canary's interval is at least 1s".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return invalid(format!("max_error_rate is a fraction from 0 to 1, not {}", self.max_error_rate));
        }
        if self.max_p99_ms.is_some_and(|ms| ms.is_nan() || ms <= 0.0) {
            return invalid("max_p99_ms must be a positive number of milliseconds".into());
        }
        Ok(())
    }
}

/// A canary: its spec, its current share and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Canary {
    #[serde(flatten)]
    pub spec: CanarySpec,
    /// Its share now (the spec's, plus the steps taken).
    pub current: u32,
    pub state: CanaryState,
    pub started_at: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Mirror {
    pub version: u32,
    pub percent: u32,
}

/// A release as stored (one JSON column).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Release {
    pub stable: Option<u32>,
    /// The stable version before the current one: where `rollback` goes.
    pub previous: Option<u32>,
    pub canary: Option<Canary>,
    pub mirror: Option<Mirror>,
    pub aliases: BTreeMap<String, u32>,
}

impl Release {
    fn progressing(&self) -> Option<&Canary> {
        self.canary.as_ref().filter(|c| c.state == CanaryState::Progressing)
    }
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub version: u32,
    /// A version to send a copy of the call to, after the caller's answer.
    pub mirror: Option<u32>,
}

/// What mirrored calls did since the mirror was set.
#[derive(Debug, Default, Clone)]
struct Shadow {
    tally: Tally,
    compared: u64,
    agreed: u64,
}

/// One release in memory.
struct Live {
    release: Release,
    /// The canary's and the stable version's calls in the current interval.
    canary: Tally,
    stable: Tally,
    interval_started: Instant,
    shadow: Shadow,
    /// Unkeyed calls routed so far, and calls considered for mirroring: each share is taken
    /// exactly, in turn.
    routed: u64,
    mirrored: u64,
}

impl Live {
    fn new(release: Release) -> Self {
        Self {
            release,
            canary: Tally::default(),
            stable: Tally::default(),
            interval_started: Instant::now(),
            shadow: Shadow::default(),
            routed: 0,
            mirrored: 0,
        }
    }
}

/// One history event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: &'static str,
    pub from: Option<u32>,
    pub to: Option<u32>,
    pub reason: String,
}

impl Event {
    fn new(event: &'static str, from: Option<u32>, to: Option<u32>, reason: impl Into<String>) -> Self {
        Self { event, from, to, reason: reason.into() }
    }
}

/// Who changed a release, for its history and the audit log.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A key (by id); the audit middleware writes the entry for the request.
    Key(&'a str),
    /// The server itself (an automatic rollback or promotion): the entry is written here.
    System,
}

type Table = RwLock<HashMap<String, HashMap<String, Arc<Mutex<Live>>>>>;

pub struct Releases {
    db: Db,
    functions: Table,
    models: Table,
    /// Changes are made one at a time: database first, then memory.
    writing: tokio::sync::Mutex<()>,
    audit: crate::audit::Audit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Releases {
    /// Loads every release from the database.
    pub fn open(db: Db, audit: crate::audit::Audit, metrics: Arc<crate::metrics::Metrics>) -> anyhow::Result<Self> {
        let rows: Vec<(String, String, String, String)> = db.call_blocking(|conn| {
            let mut stmt = conn.prepare("SELECT tenant, kind, name, release FROM releases")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        let releases = Self {
            db,
            functions: RwLock::default(),
            models: RwLock::default(),
            writing: tokio::sync::Mutex::new(()),
            audit,
            metrics,
        };
        for (tenant, kind, name, release) in rows {
            let Some(subject) = Subject::parse(&kind) else { continue };
            match serde_json::from_str::<Release>(&release) {
                Ok(release) => releases.install(subject, &tenant, &name, release),
                // One unreadable release must not keep the server from starting: its function
                // serves its newest version, and the error says which.
                Err(e) => tracing::error!(tenant, name, error = %e, "cannot read a release; ignoring it"),
            }
        }
        Ok(releases)
    }

    fn table(&self, subject: Subject) -> &Table {
        match subject {
            Subject::Function => &self.functions,
            Subject::Model => &self.models,
        }
    }

    fn live(&self, subject: Subject, tenant: &str, name: &str) -> Option<Arc<Mutex<Live>>> {
        self.table(subject).read().ok()?.get(tenant)?.get(name).cloned()
    }

    /// The release as it is now (none set: an empty one).
    pub fn get(&self, subject: Subject, tenant: &str, name: &str) -> Release {
        self.live(subject, tenant, name).and_then(|l| l.lock().ok().map(|l| l.release.clone())).unwrap_or_default()
    }

    fn install(&self, subject: Subject, tenant: &str, name: &str, release: Release) {
        let Ok(mut table) = self.table(subject).write() else { return };
        let functions = table.entry(tenant.to_string()).or_default();
        match functions.get(name) {
            Some(live) => {
                if let Ok(mut live) = live.lock() {
                    let canary_changed = live.release.progressing().map(|c| (c.spec.version, c.current))
                        != release.progressing().map(|c| (c.spec.version, c.current));
                    let mirror_changed =
                        live.release.mirror.map(|m| m.version) != release.mirror.as_ref().map(|m| m.version);
                    live.release = release;
                    if canary_changed {
                        live.canary = Tally::default();
                        live.stable = Tally::default();
                        live.interval_started = Instant::now();
                    }
                    if mirror_changed {
                        live.shadow = Shadow::default();
                    }
                }
            }
            None => {
                functions.insert(name.to_string(), Arc::new(Mutex::new(Live::new(release))));
            }
        }
    }

    /// Where an unpinned call of `name` goes; `None` while no release is set (the newest
    /// version serves).
    pub fn route(&self, subject: Subject, tenant: &str, name: &str, key: Option<&[u8]>) -> Option<Route> {
        let live = self.live(subject, tenant, name)?;
        let mut live = live.lock().ok()?;
        let stable = live.release.stable?;
        let canary = live.release.progressing().map(|c| (c.spec.version, u64::from(c.current)));
        let version = match canary {
            Some((canary, percent)) => {
                let to_canary = match key {
                    Some(key) => bucket(name, canary, key) < percent * 100,
                    None => {
                        live.routed += 1;
                        let n = live.routed;
                        n * percent / 100 != (n - 1) * percent / 100
                    }
                };
                if to_canary { canary } else { stable }
            }
            None => stable,
        };
        let mirror = match live.release.mirror {
            Some(m) if m.version != version => {
                live.mirrored += 1;
                let n = live.mirrored;
                let percent = u64::from(m.percent);
                (n * percent / 100 != (n - 1) * percent / 100).then_some(m.version)
            }
            _ => None,
        };
        Some(Route { version, mirror })
    }

    /// The version an alias names.
    pub fn alias(&self, subject: Subject, tenant: &str, name: &str, alias: &str) -> Result<u32, RegistryError> {
        self.get(subject, tenant, name)
            .aliases
            .get(alias)
            .copied()
            .ok_or_else(|| RegistryError::NotFound { kind: "alias", name: format!("{name}@{alias}") })
    }

    /// Counts a routed call toward its canary's health (calls pinned by number or alias do not
    /// count: they did not take the release's route).
    pub fn observe(&self, subject: Subject, tenant: &str, name: &str, version: u32, failed: bool, took: Duration) {
        let Some(live) = self.live(subject, tenant, name) else { return };
        let Ok(mut live) = live.lock() else { return };
        let Some(canary) = live.release.progressing() else { return };
        if version == canary.spec.version {
            live.canary.record(failed, took);
        } else if Some(version) == live.release.stable {
            live.stable.record(failed, took);
        }
    }

    /// Counts a mirrored call: `agreed` says whether its answer matched the served one (None:
    /// the served answer could not be compared).
    #[allow(clippy::too_many_arguments)]
    pub fn observe_shadow(
        &self,
        subject: Subject,
        tenant: &str,
        name: &str,
        version: u32,
        failed: bool,
        took: Duration,
        agreed: Option<bool>,
    ) {
        let Some(live) = self.live(subject, tenant, name) else { return };
        let Ok(mut live) = live.lock() else { return };
        // A late copy of a mirror that was moved or stopped does not count toward the next.
        if live.release.mirror.map(|m| m.version) != Some(version) {
            return;
        }
        live.shadow.tally.record(failed, took);
        if let Some(agreed) = agreed {
            live.shadow.compared += 1;
            live.shadow.agreed += u64::from(agreed);
        }
    }

    /// Changes a release: `change` edits a copy and names the event; the copy and the event
    /// are written in one transaction, then take effect. Automatic changes are audited here.
    pub async fn change(
        &self,
        subject: Subject,
        tenant: &str,
        name: &str,
        actor: Actor<'_>,
        change: impl FnOnce(&mut Release) -> Result<Event, RegistryError>,
    ) -> Result<(Release, Event), RegistryError> {
        let _writing = self.writing.lock().await;
        let mut release = self.get(subject, tenant, name);
        let event = change(&mut release)?;
        let at = crate::clock::now_rfc3339();
        let actor_id = match actor {
            Actor::Key(id) => id.to_string(),
            Actor::System => "system".to_string(),
        };
        let (t, n, json, e, a) = (
            tenant.to_string(),
            name.to_string(),
            serde_json::to_string(&release).map_err(anyhow::Error::from)?,
            event.clone(),
            at,
        );
        let stored = self
            .db
            .call(move |conn| {
                let tx = conn.transaction()?;
                // The function (or model) still has a live version: a change checked before a
                // delete committed must not bring its release back.
                let table = match subject {
                    Subject::Function => "functions",
                    Subject::Model => "models",
                };
                let live: bool = tx.query_row(
                    &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL)"),
                    params![t, n],
                    |r| r.get(0),
                )?;
                if !live {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO releases (tenant, kind, name, release, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (tenant, kind, name) DO UPDATE SET release = excluded.release, updated_at = excluded.updated_at",
                    params![t, subject.as_str(), n, json, a],
                )?;
                // Aliases move without a history event (the audit log has them). The history
                // keeps the newest events of each release.
                if e.event != "alias" {
                    tx.execute(
                        "DELETE FROM release_history WHERE tenant = ?1 AND kind = ?2 AND name = ?3 AND seq <= (
                           SELECT seq FROM release_history WHERE tenant = ?1 AND kind = ?2 AND name = ?3
                           ORDER BY seq DESC LIMIT 1 OFFSET ?4)",
                        params![t, subject.as_str(), n, HISTORY_KEPT - 1],
                    )?;
                    tx.execute(
                        "INSERT INTO release_history (tenant, kind, name, at, event, from_version, to_version, reason, actor)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![t, subject.as_str(), n, a, e.event, e.from, e.to, e.reason, actor_id],
                    )?;
                }
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if !stored {
            return Err(RegistryError::NotFound { kind: subject.as_str(), name: name.to_string() });
        }
        self.install(subject, tenant, name, release.clone());
        let cause = if matches!(actor, Actor::System) { "automatic" } else { "manual" };
        self.metrics.release_event(event.event, tenant, subject.as_str(), name, cause);
        if matches!(actor, Actor::System) {
            let target = format!("{name}@{}", event.to.map_or_else(|| "-".to_string(), |v| v.to_string()));
            let action = format!("release.{}", event.event);
            let mut entry = crate::audit::entry("system", Some(tenant), &action, Some(&target), "ok");
            entry.detail = Some(event.reason.clone());
            self.audit.record(entry).await;
        }
        Ok((release, event))
    }

    /// Forgets a deleted function's (or model's) release and history.
    pub async fn forget(&self, subject: Subject, tenant: &str, name: &str) -> Result<(), RegistryError> {
        let _writing = self.writing.lock().await;
        let (t, n) = (tenant.to_string(), name.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                tx.execute(
                    "DELETE FROM releases WHERE tenant = ?1 AND kind = ?2 AND name = ?3",
                    params![t, subject.as_str(), n],
                )?;
                tx.execute(
                    "DELETE FROM release_history WHERE tenant = ?1 AND kind = ?2 AND name = ?3",
                    params![t, subject.as_str(), n],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        if let Ok(mut table) = self.table(subject).write()
            && let Some(functions) = table.get_mut(tenant)
        {
            functions.remove(name);
        }
        Ok(())
    }

    /// Judges every canary in progress (called once a second): rolls back an unhealthy one at
    /// once; at the end of an interval, steps a healthy one that had `min_requests` calls (and
    /// promotes it at 100%), or holds one that had fewer; then starts the next interval.
    pub async fn judge(&self) {
        let mut decisions = Vec::new();
        for subject in [Subject::Function, Subject::Model] {
            let Ok(table) = self.table(subject).read() else { continue };
            for (tenant, functions) in table.iter() {
                for (name, live) in functions {
                    let Ok(mut live) = live.lock() else { continue };
                    let Some(canary) = live.release.progressing().cloned() else { continue };
                    let limits = health::Limits {
                        max_error_rate: canary.spec.max_error_rate,
                        max_p99_ms: canary.spec.max_p99_ms,
                        min_requests: canary.spec.min_requests,
                    };
                    if let Some(reason) = health::unhealthy(&live.canary, &live.stable, &limits) {
                        decisions.push((
                            subject,
                            tenant.clone(),
                            name.clone(),
                            canary.clone(),
                            Decision::Rollback(reason),
                        ));
                        continue;
                    }
                    if live.interval_started.elapsed() < canary.spec.interval {
                        continue;
                    }
                    let enough = live.canary.calls >= canary.spec.min_requests;
                    match canary.spec.step {
                        Some(step) if enough => {
                            let reason = format!(
                                "healthy over {} calls in the interval (error rate {:.3}, p99 {:.1} ms)",
                                live.canary.calls,
                                live.canary.error_rate(),
                                live.canary.p99_ms()
                            );
                            let to = (canary.current + step).min(100);
                            decisions.push((
                                subject,
                                tenant.clone(),
                                name.clone(),
                                canary.clone(),
                                Decision::Step { to, reason },
                            ));
                        }
                        _ => {}
                    }
                    live.canary = Tally::default();
                    live.stable = Tally::default();
                    live.interval_started = Instant::now();
                }
            }
        }
        for (subject, tenant, name, judged, decision) in decisions {
            let version = judged.spec.version;
            let result = self
                .change(subject, &tenant, &name, Actor::System, |release| {
                    // The canary judged is still the one in progress, at the share judged
                    // (nobody stopped, restarted or moved it meanwhile).
                    let canary = match release.canary.as_mut() {
                        Some(c)
                            if c.state == CanaryState::Progressing
                                && c.spec.version == version
                                && c.started_at == judged.started_at
                                && c.current == judged.current =>
                        {
                            c
                        }
                        _ => return Err(RegistryError::Conflict("the canary changed meanwhile".into())),
                    };
                    Ok(match decision {
                        Decision::Rollback(reason) => {
                            canary.state = CanaryState::RolledBack;
                            Event::new("rollback", Some(version), release.stable, reason)
                        }
                        Decision::Step { to: 100, reason } => {
                            canary.current = 100;
                            canary.state = CanaryState::Promoted;
                            release.previous = release.stable;
                            release.stable = Some(version);
                            Event::new("promote", release.previous, Some(version), format!("reached 100%: {reason}"))
                        }
                        Decision::Step { to, reason } => {
                            let from = canary.current;
                            canary.current = to;
                            Event::new("canary", release.stable, Some(version), format!("{from}% -> {to}%: {reason}"))
                        }
                    })
                })
                .await;
            match result {
                Ok((_, event)) => {
                    tracing::info!(tenant, name, event = event.event, reason = %event.reason, "release changed")
                }
                Err(RegistryError::Conflict(_)) => {}
                Err(e) => tracing::error!(tenant, name, error = %e, "cannot record a canary's judgement"),
            }
        }
    }

    /// `release status` as JSON (see docs/api.md).
    pub async fn status(&self, subject: Subject, tenant: &str, name: &str) -> Result<Value, RegistryError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let history: Vec<Value> = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT at, event, from_version, to_version, reason, actor FROM release_history
                     WHERE tenant = ?1 AND kind = ?2 AND name = ?3 ORDER BY seq DESC LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![t, subject.as_str(), n, HISTORY_SHOWN], |r| {
                    Ok(json!({
                        "at": r.get::<_, String>(0)?,
                        "event": r.get::<_, String>(1)?,
                        "from": r.get::<_, Option<u32>>(2)?,
                        "to": r.get::<_, Option<u32>>(3)?,
                        "reason": r.get::<_, String>(4)?,
                        "actor": r.get::<_, String>(5)?,
                    }))
                })?;
                let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
                rows.reverse();
                Ok(rows)
            })
            .await?;
        let live = self.live(subject, tenant, name);
        let live = live.as_ref().and_then(|l| l.lock().ok());
        let release = live.as_ref().map(|l| l.release.clone()).unwrap_or_default();
        let figures = |t: &Tally| json!({ "calls": t.calls, "error_rate": t.error_rate(), "p99_ms": t.p99_ms() });
        let canary = release.canary.as_ref().map(|c| {
            let mut value = json!({
                "version": c.spec.version,
                "percent": c.current,
                "state": c.state,
                "start_percent": c.spec.percent,
                "step": c.spec.step,
                "interval": humantime::format_duration(c.spec.interval).to_string(),
                "max_error_rate": c.spec.max_error_rate,
                "max_p99_ms": c.spec.max_p99_ms,
                "min_requests": c.spec.min_requests,
                "started_at": c.started_at,
            });
            if let (Some(live), CanaryState::Progressing) = (&live, c.state) {
                value["interval_figures"] = json!({ "canary": figures(&live.canary), "stable": figures(&live.stable) });
            }
            value
        });
        let mirror = release.mirror.map(|m| {
            let shadow = live.as_ref().map(|l| l.shadow.clone()).unwrap_or_default();
            json!({
                "version": m.version,
                "percent": m.percent,
                "calls": shadow.tally.calls,
                "error_rate": shadow.tally.error_rate(),
                "p99_ms": shadow.tally.p99_ms(),
                "compared": shadow.compared,
                "agreement": (shadow.compared > 0).then(|| shadow.agreed as f64 / shadow.compared as f64),
            })
        });
        Ok(json!({
            subject.as_str(): name,
            "stable": release.stable,
            "previous": release.previous,
            "canary": canary,
            "mirror": mirror,
            "aliases": release.aliases,
            "history": history,
        }))
    }
}

enum Decision {
    Rollback(String),
    Step { to: u32, reason: String },
}

/// Where a route key falls, 0..10000: the same key, function and canary version always fall
/// in the same place; another canary reshuffles the keys.
fn bucket(name: &str, canary: u32, key: &[u8]) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(canary.to_le_bytes());
    hasher.update(key);
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()) % 10_000
}

/// Checks an alias name: a letter, then letters, digits, `-` or `_`; at most 63 characters.
pub fn check_alias(alias: &str) -> Result<(), RegistryError> {
    let mut chars = alias.chars();
    let first_is_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_is_letter || alias.len() > 63 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(RegistryError::Invalid(format!(
            "`{alias}` is not an alias name: an alias starts with a letter (then letters, digits, - or _; at most 63), so it never reads as a version number"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(percent: u32, step: Option<u32>) -> CanarySpec {
        CanarySpec {
            version: 2,
            percent,
            step,
            interval: Duration::from_secs(30),
            max_error_rate: 0.01,
            max_p99_ms: None,
            min_requests: 20,
        }
    }

    #[test]
    fn steps_that_never_land_on_100_are_refused() {
        spec(10, Some(10)).check().expect("10, 20, ..., 100");
        spec(10, Some(30)).check().expect("10, 40, 70, 100");
        spec(10, None).check().expect("holds at 10%");
        let err = spec(10, Some(25)).check().expect_err("10, 35, 60, 85, 110");
        assert!(err.to_string().contains("must divide 90"), "{err}");
        spec(10, Some(0)).check().expect_err("never moves");
        spec(0, None).check().expect_err("no share");
        spec(100, None).check().expect_err("that is a release");
    }

    #[test]
    fn unkeyed_calls_take_the_exact_share_and_keys_stick() {
        let canary =
            Canary { spec: spec(10, None), current: 10, state: CanaryState::Progressing, started_at: String::new() };
        let release = Release { stable: Some(1), canary: Some(canary), ..Release::default() };
        let db = Db::open(&std::env::temp_dir().join(format!("releases-{}.db", uuid::Uuid::now_v7()))).expect("db");
        let releases = Releases::open(db.clone(), crate::audit::Audit::new(db), Default::default()).expect("open");
        releases.install(Subject::Function, "t", "f", release);
        let to_canary = (0..1000)
            .filter(|_| releases.route(Subject::Function, "t", "f", None).expect("routed").version == 2)
            .count();
        assert_eq!(to_canary, 100);
        for key in ["alice", "bob", "carol", "dave"] {
            let first = releases.route(Subject::Function, "t", "f", Some(key.as_bytes())).expect("routed");
            for _ in 0..20 {
                assert_eq!(releases.route(Subject::Function, "t", "f", Some(key.as_bytes())), Some(first), "{key}");
            }
        }
        let keyed = (0..2000)
            .filter(|i| {
                let key = format!("user-{i}");
                releases.route(Subject::Function, "t", "f", Some(key.as_bytes())).expect("routed").version == 2
            })
            .count();
        assert!((120..=280).contains(&keyed), "{keyed} of 2000 keys on a 10% canary");
        assert_eq!(releases.route(Subject::Function, "t", "other", None), None, "no release: the newest serves");
    }

    #[test]
    fn alias_names_start_with_a_letter() {
        check_alias("prod").expect("ok");
        check_alias("canary-2_b").expect("ok");
        for bad in ["", "2", "1prod", "-x", "pro d", "a/b", &"x".repeat(64)] {
            check_alias(bad).expect_err(bad);
        }
    }
}
