//! Releases and aliases (`/v1/functions/{name}/release...`, `/v1/functions/{name}/aliases...`;
//! the same under `/v1/models/{name}/`). Every answer that changes a release is its status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::registry::RegistryError;
use crate::releases::{Actor, Canary, CanarySpec, CanaryState, Event, Mirror, Release, Subject, check_alias};
use crate::tenants::{Principal, Role};

const DEPLOYERS: &[Role] = &[Role::Owner, Role::Deployer];

fn subject(model: bool) -> Subject {
    if model { Subject::Model } else { Subject::Function }
}

/// The live versions of `name`, oldest first; 404 when there is none.
async fn versions(app: &App, subject: Subject, tenant: &str, name: &str) -> Result<Vec<u32>, ApiError> {
    Ok(checked(app, subject, tenant, name).await?.into_iter().map(|(v, _)| v).collect())
}

/// [`versions`], each with whether its smoke tests failed (or are still running).
async fn checked(app: &App, subject: Subject, tenant: &str, name: &str) -> Result<Vec<(u32, bool)>, ApiError> {
    Ok(match subject {
        Subject::Function => app
            .registry
            .versions(tenant, name)
            .await?
            .iter()
            .map(|v| (v.version, v.smoke.as_ref().is_some_and(|s| !s.passed)))
            .collect(),
        Subject::Model => {
            let all = app.registry.models.named(tenant, name).await?;
            if all.is_empty() {
                return Err(RegistryError::NotFound { kind: "model", name: name.to_string() }.into());
            }
            all.iter().map(|v| (v.version, false)).collect()
        }
    })
}

/// Refuses to release `version` when it does not exist, or its smoke tests failed (unless
/// `force`).
pub fn releasable(
    known: &[(u32, bool)],
    subject: Subject,
    name: &str,
    version: u32,
    force: bool,
) -> Result<(), ApiError> {
    match known.iter().find(|(v, _)| *v == version) {
        None => Err(no_version(subject, name, version)),
        Some((_, true)) if !force => Err(ApiError::Conflict(format!(
            "version {version} of `{name}` has not passed its smoke tests (GET /v1/functions/{name} shows them; they may still be running): fix it, or release it anyway with force"
        ))),
        Some(_) => Ok(()),
    }
}

/// Makes `serving` (the version the bare name runs while no release is set) the stable
/// version, as a `set` event, unless a stable version is set already; whether it did. Done
/// before a canary, mirror or release deploy, so the traffic stays where it is.
pub async fn pin_serving(
    app: &App,
    subject: Subject,
    tenant: &str,
    name: &str,
    actor: Actor<'_>,
    serving: u32,
    why: &str,
) -> Result<bool, ApiError> {
    if app.releases.get(subject, tenant, name).stable.is_some() {
        return Ok(false);
    }
    let pinned = app
        .releases
        .change(subject, tenant, name, actor, |release| {
            if release.stable.is_some() {
                return Err(RegistryError::Conflict("set meanwhile".into()));
            }
            release.stable = Some(serving);
            Ok(Event { event: "set", from: None, to: Some(serving), reason: format!("the serving version, {why}") })
        })
        .await;
    match pinned {
        Ok(_) => Ok(true),
        Err(RegistryError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The version the bare name runs while no release is set: the newest whose smoke tests did
/// not fail, else the newest.
fn serving_without_release(known: &[(u32, bool)], except: u32) -> Option<u32> {
    let others = || known.iter().rev().filter(|(v, _)| *v != except);
    others().find(|(_, failed)| !failed).or_else(|| others().next()).map(|(v, _)| *v)
}

fn no_version(subject: Subject, name: &str, version: u32) -> ApiError {
    RegistryError::NoVersion { kind: subject.as_str(), name: name.to_string(), version }.into()
}

/// The status after a change, naming what changed for the audit log.
async fn changed(app: &App, subject: Subject, tenant: &str, name: &str, event: &Event) -> Result<Response, ApiError> {
    let status = app.releases.status(subject, tenant, name).await?;
    let mut response = Json(status).into_response();
    let to = event.to.map_or_else(|| "-".to_string(), |v| v.to_string());
    response.extensions_mut().insert(AuditTarget(format!("{name}@{to}: {}", event.reason)));
    Ok(response)
}

/// `GET .../{name}/release`: the release, its canary and mirror with their figures, aliases
/// and history.
pub async fn status<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let subject = subject(MODEL);
    let known = versions(&app, subject, tenant, &name).await?;
    let mut status = app.releases.status(subject, tenant, &name).await?;
    // What answers the bare name now: the stable version, or the newest while none is set.
    status["serving"] = json!(status["stable"].as_u64().or(known.last().map(|v| u64::from(*v))));
    Ok(Json(status).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    version: u32,
    /// Release it although its smoke tests failed.
    #[serde(default)]
    force: bool,
}

/// `PUT .../{name}/release` `{"version":N}`: N serves every unpinned call. A canary in
/// progress must be promoted or rolled back first.
pub async fn set<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Result<Json<SetBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let subject = subject(MODEL);
    let known = checked(&app, subject, tenant, &name).await?;
    releasable(&known, subject, &name, body.version, body.force)?;
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            if let Some(canary) = release.canary.as_ref().filter(|c| c.state == CanaryState::Progressing) {
                return Err(RegistryError::Conflict(format!(
                    "version {} is a canary at {}%: promote it or roll it back first",
                    canary.spec.version, canary.current
                )));
            }
            let from = release.stable;
            if from != Some(body.version) {
                release.previous = from;
                release.stable = Some(body.version);
            }
            Ok(Event { event: "set", from, to: Some(body.version), reason: "set by hand".into() })
        })
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    pub version: u32,
    pub percent: u32,
    #[serde(default)]
    pub step: Option<u32>,
    /// `30s`, `5m`, ...
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Start it although its smoke tests failed.
    #[serde(default)]
    pub force: bool,
}

impl CanaryBody {
    pub fn spec(&self) -> Result<CanarySpec, ApiError> {
        let interval = match &self.interval {
            None => CanarySpec::DEFAULT_INTERVAL,
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| ApiError::BadRequest(format!("interval `{text}` is not a duration (30s, 5m): {e}")))?,
        };
        let spec = CanarySpec {
            version: self.version,
            percent: self.percent,
            step: self.step,
            interval,
            max_error_rate: self.max_error_rate.unwrap_or(CanarySpec::DEFAULT_MAX_ERROR_RATE),
            max_p99_ms: self.max_p99_ms,
            min_requests: self.min_requests.unwrap_or(CanarySpec::DEFAULT_MIN_REQUESTS),
        };
        spec.check()?;
        Ok(spec)
    }
}

/// Starts a canary of `spec.version` on `release` (see [`canary`]), beside its stable version.
pub fn start_canary(release: &mut Release, spec: CanarySpec) -> Result<Event, RegistryError> {
    if let Some(canary) = release.canary.as_ref().filter(|c| c.state == CanaryState::Progressing) {
        return Err(RegistryError::Conflict(format!(
            "version {} is a canary at {}% already: promote it or roll it back first",
            canary.spec.version, canary.current
        )));
    }
    let Some(stable) = release.stable else {
        return Err(RegistryError::Conflict(format!(
            "version {} is the only version: there is no stable version for a canary to run beside",
            spec.version
        )));
    };
    if stable == spec.version {
        return Err(RegistryError::Conflict(format!("version {stable} is the stable version already")));
    }
    let reason = match spec.step {
        Some(step) => {
            format!("{}%, +{step}% every {} while healthy", spec.percent, humantime::format_duration(spec.interval))
        }
        None => format!("{}%, held until promoted", spec.percent),
    };
    let version = spec.version;
    release.canary = Some(Canary {
        current: spec.percent,
        spec,
        state: CanaryState::Progressing,
        started_at: crate::clock::now_rfc3339(),
    });
    Ok(Event { event: "canary", from: Some(stable), to: Some(version), reason })
}

/// `POST .../{name}/release/canary` `{"version","percent","step","interval","max_error_rate",
/// "max_p99_ms","min_requests"}`.
pub async fn canary<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Result<Json<CanaryBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let spec = body.spec()?;
    let subject = subject(MODEL);
    let known = checked(&app, subject, tenant, &name).await?;
    releasable(&known, subject, &name, spec.version, body.force)?;
    if let Some(serving) = serving_without_release(&known, spec.version) {
        pin_serving(&app, subject, tenant, &name, Actor::Key(&principal.key_id), serving, "before a canary").await?;
    }
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| start_canary(release, spec))
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

fn no_canary(name: &str) -> RegistryError {
    RegistryError::Conflict(format!("`{name}` has no canary in progress"))
}

/// `POST .../{name}/release/promote`: the canary becomes the stable version.
pub async fn promote<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let subject = subject(MODEL);
    versions(&app, subject, tenant, &name).await?;
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            let canary = release
                .canary
                .as_mut()
                .filter(|c| c.state == CanaryState::Progressing)
                .ok_or_else(|| no_canary(&name))?;
            canary.state = CanaryState::Promoted;
            let (version, at) = (canary.spec.version, canary.current);
            canary.current = 100;
            release.previous = release.stable;
            release.stable = Some(version);
            Ok(Event {
                event: "promote",
                from: release.previous,
                to: Some(version),
                reason: format!("by hand, at {at}%"),
            })
        })
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(default)]
    to: Option<u32>,
    /// Roll back to `to` although its smoke tests failed.
    #[serde(default)]
    force: bool,
}

/// `POST .../{name}/release/rollback` `[{"to":N}]`: stops a canary in progress; without one,
/// puts the previous stable version back (or N). Calls running finish on their version.
pub async fn rollback<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let (to, force) = body.map(|Json(b)| (b.to, b.force)).unwrap_or_default();
    let subject = subject(MODEL);
    let known = checked(&app, subject, tenant, &name).await?;
    if let Some(to) = to {
        releasable(&known, subject, &name, to, force)?;
    }
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            if let Some(canary) = release.canary.as_mut().filter(|c| c.state == CanaryState::Progressing) {
                canary.state = CanaryState::RolledBack;
                let from = Some(canary.spec.version);
                if let Some(to) = to.filter(|to| Some(*to) != release.stable) {
                    release.previous = release.stable;
                    release.stable = Some(to);
                }
                return Ok(Event {
                    event: "rollback",
                    from,
                    to: release.stable,
                    reason: "canary stopped by hand".into(),
                });
            }
            let Some(stable) = release.stable else {
                return Err(RegistryError::Conflict(format!(
                    "`{name}` has no release to roll back: set one first (release set {name} N)"
                )));
            };
            let target = match to.or(release.previous) {
                Some(v) => v,
                None => {
                    return Err(RegistryError::Conflict(format!(
                        "`{name}` has no previous stable version: name one (release rollback {name} --to N)"
                    )));
                }
            };
            if target == stable {
                return Err(RegistryError::Conflict(format!("version {stable} is the stable version already")));
            }
            release.previous = Some(stable);
            release.stable = Some(target);
            Ok(Event { event: "rollback", from: Some(stable), to: Some(target), reason: "by hand".into() })
        })
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorBody {
    version: u32,
    #[serde(default)]
    percent: Option<u32>,
}

/// `PUT .../{name}/release/mirror` `{"version","percent"}` (default 100%): copies of that share
/// of the calls go to the version after the caller's answer; `DELETE` stops it.
pub async fn mirror<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Result<Json<MirrorBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let percent = body.percent.unwrap_or(100);
    if !(1..=100).contains(&percent) {
        return Err(ApiError::BadRequest(format!("a mirror copies 1 to 100 percent of the calls, not {percent}")));
    }
    let subject = subject(MODEL);
    let known = versions(&app, subject, tenant, &name).await?;
    if !known.contains(&body.version) {
        return Err(no_version(subject, &name, body.version));
    }
    let checked = checked(&app, subject, tenant, &name).await?;
    if let Some(serving) = serving_without_release(&checked, body.version) {
        pin_serving(&app, subject, tenant, &name, Actor::Key(&principal.key_id), serving, "before a mirror").await?;
    }
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            if release.stable == Some(body.version) || release.stable.is_none() {
                return Err(RegistryError::Conflict(format!(
                    "version {} is the stable version: a mirror copies calls to another version",
                    body.version
                )));
            }
            let from = release.mirror.map(|m| m.version);
            release.mirror = Some(Mirror { version: body.version, percent });
            Ok(Event { event: "mirror", from, to: Some(body.version), reason: format!("{percent}% of the calls") })
        })
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

/// `DELETE .../{name}/release/mirror`.
pub async fn mirror_off<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let subject = subject(MODEL);
    versions(&app, subject, tenant, &name).await?;
    let (_, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            let from = release.mirror.take().map(|m| m.version);
            if from.is_none() {
                return Err(RegistryError::Conflict(format!("`{name}` has no mirror")));
            }
            Ok(Event { event: "mirror", from, to: None, reason: "off".into() })
        })
        .await?;
    changed(&app, subject, tenant, &name, &event).await
}

/// `{"function"|"model": name, "aliases": {...}}`.
fn aliases_body(subject: Subject, name: &str, release: &Release) -> Response {
    Json(json!({ subject.as_str(): name, "aliases": release.aliases })).into_response()
}

/// `GET .../{name}/aliases`: `{"aliases":{"prod":3,...}}`.
pub async fn aliases<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let subject = subject(MODEL);
    versions(&app, subject, tenant, &name).await?;
    let release = app.releases.get(subject, tenant, &name);
    Ok(aliases_body(subject, &name, &release))
}

/// `PUT .../{name}/aliases/{alias}` `{"version":N}`: makes or moves an alias.
pub async fn set_alias<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path((name, alias)): Path<(String, String)>,
    body: Result<Json<SetBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_alias(&alias)?;
    let subject = subject(MODEL);
    let known = versions(&app, subject, tenant, &name).await?;
    if !known.contains(&body.version) {
        return Err(no_version(subject, &name, body.version));
    }
    let (release, event) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            if release.aliases.len() >= crate::releases::MAX_ALIASES && !release.aliases.contains_key(&alias) {
                return Err(RegistryError::Quota(format!(
                    "`{name}` has {} aliases, the most one may have: remove one first",
                    crate::releases::MAX_ALIASES
                )));
            }
            let from = release.aliases.insert(alias.clone(), body.version);
            Ok(Event { event: "alias", from, to: Some(body.version), reason: format!("{alias} -> {}", body.version) })
        })
        .await?;
    let mut response = aliases_body(subject, &name, &release);
    response.extensions_mut().insert(AuditTarget(format!("{name}@{alias} -> {}", event.to.unwrap_or_default())));
    Ok(response)
}

/// `DELETE .../{name}/aliases/{alias}`.
pub async fn remove_alias<const MODEL: bool>(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let subject = subject(MODEL);
    versions(&app, subject, tenant, &name).await?;
    let (release, _) = app
        .releases
        .change(subject, tenant, &name, Actor::Key(&principal.key_id), |release| {
            let from = release
                .aliases
                .remove(&alias)
                .ok_or_else(|| RegistryError::NotFound { kind: "alias", name: format!("{name}@{alias}") })?;
            Ok(Event { event: "alias", from: Some(from), to: None, reason: format!("{alias} removed") })
        })
        .await?;
    let mut response = aliases_body(subject, &name, &release);
    response.extensions_mut().insert(AuditTarget(format!("{name}@{alias}")));
    Ok(response)
}
