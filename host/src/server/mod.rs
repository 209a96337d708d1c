//! The HTTP surface: data plane (`/fn/...`) and management API (`/v1/...`).
//!
//! [`router`] is a plain function of the application state so tests can drive it without a
//! socket; [`serve`] binds it, prints `listening on http://ADDR` and drains in-flight calls on
//! SIGTERM or Ctrl-C.

mod audit;
mod auth;
mod billing;
mod files;
mod functions;
mod invoke;
mod keys;
mod models;
mod releases;
mod secrets;
mod tenants;
mod v2;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

pub use crate::app::{AdminKeySource, App};
use crate::error::{ApiError, ErrorMessage, error_body};

/// Header carrying the id of every request.
pub const REQUEST_ID_HEADER: &str = "infercell-request-id";
/// Header carrying the meters of an invocation.
pub use crate::invocation::USAGE_HEADER;

/// The id of the current request, set by the middleware for every request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Marks a response that a function produced, so its 4xx/5xx bodies are passed through as-is.
#[derive(Debug, Clone, Copy)]
pub struct FunctionResponse;

/// The whole HTTP surface.
pub fn router(app: Arc<App>) -> Router {
    let upload_limit = app.config.server.max_upload_bytes as usize;
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(|| async { axum::Json(serde_json::json!({ "ready": true })) }))
        .route("/metrics", get(metrics))
        .route("/v1/tenants", post(tenants::create_tenant).get(tenants::list_tenants))
        .route(
            "/v1/functions",
            post(functions::upload_function).layer(DefaultBodyLimit::max(upload_limit)).get(functions::list_functions),
        )
        .route("/v1/functions/{name}", get(functions::get_function).delete(functions::delete_function))
        .route("/v1/functions/{name}/logs", get(functions::function_logs))
        .route("/v1/functions/{name}/release", get(releases::status::<false>).put(releases::set::<false>))
        .route("/v1/functions/{name}/release/canary", post(releases::canary::<false>))
        .route("/v1/functions/{name}/release/promote", post(releases::promote::<false>))
        .route("/v1/functions/{name}/release/rollback", post(releases::rollback::<false>))
        .route(
            "/v1/functions/{name}/release/mirror",
            axum::routing::put(releases::mirror::<false>).delete(releases::mirror_off::<false>),
        )
        .route("/v1/functions/{name}/aliases", get(releases::aliases::<false>))
        .route(
            "/v1/functions/{name}/aliases/{alias}",
            axum::routing::put(releases::set_alias::<false>).delete(releases::remove_alias::<false>),
        )
        .route(
            "/v1/models",
            post(models::push_model).layer(DefaultBodyLimit::max(upload_limit)).get(models::list_models),
        )
        .route("/v1/models/{name}", get(models::get_model).delete(models::delete_model))
        .route("/v1/models/{name}/monitor", get(models::monitor))
        .route("/v1/models/{name}/monitor/baseline", post(models::baseline))
        .route("/v1/models/{name}/release", get(releases::status::<true>).put(releases::set::<true>))
        .route("/v1/models/{name}/release/canary", post(releases::canary::<true>))
        .route("/v1/models/{name}/release/promote", post(releases::promote::<true>))
        .route("/v1/models/{name}/release/rollback", post(releases::rollback::<true>))
        .route(
            "/v1/models/{name}/release/mirror",
            axum::routing::put(releases::mirror::<true>).delete(releases::mirror_off::<true>),
        )
        .route("/v1/models/{name}/aliases", get(releases::aliases::<true>))
        .route(
            "/v1/models/{name}/aliases/{alias}",
            axum::routing::put(releases::set_alias::<true>).delete(releases::remove_alias::<true>),
        )
        .route("/v1/files", get(files::list_files))
        .route(
            "/v1/files/{name}",
            axum::routing::put(files::put_file).layer(DefaultBodyLimit::max(upload_limit)).delete(files::delete_file),
        )
        .route("/v1/secrets", get(secrets::list_secrets))
        .route("/v1/secrets/{name}", axum::routing::put(secrets::put_secret).delete(secrets::delete_secret))
        .route("/v1/keys", post(keys::create_key).get(keys::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke_key))
        .route("/v1/audit", get(audit::audit_log))
        .route("/v1/devices", get(devices))
        .route("/v1/usage", get(billing::usage))
        .route("/v1/billing", get(billing::billing))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/v2/models/stats", get(v2::all_model_stats))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(v2::model_ready))
        .route("/v2/models/{model}/config", get(v2::model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(v2::model_config))
        .route("/v2/models/{model}/stats", get(v2::model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(v2::model_stats))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(v2::infer))
        .route("/fn/{tenant}/{function}", any(invoke::invoke_root))
        .route("/fn/{tenant}/{function}/", any(invoke::invoke_root))
        .route("/fn/{tenant}/{function}/{*rest}", any(invoke::invoke_rest))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(app.clone(), audit_trail))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// Names a management response's target for the audit log (set by the handler).
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// The audit log's name for a management request.
fn audit_action(method: &axum::http::Method, route: &str) -> String {
    let name = match (method.as_str(), route) {
        ("POST", "/v1/tenants") => "tenant.create",
        ("POST", "/v1/keys") => "key.create",
        ("DELETE", "/v1/keys/{id}") => "key.revoke",
        ("POST", "/v1/functions") => "function.deploy",
        ("DELETE", "/v1/functions/{name}") => "function.delete",
        ("PUT", "/v1/functions/{name}/release" | "/v1/models/{name}/release") => "release.set",
        ("POST", "/v1/functions/{name}/release/canary" | "/v1/models/{name}/release/canary") => "release.canary",
        ("POST", "/v1/functions/{name}/release/promote" | "/v1/models/{name}/release/promote") => "release.promote",
        ("POST", "/v1/functions/{name}/release/rollback" | "/v1/models/{name}/release/rollback") => "release.rollback",
        ("PUT" | "DELETE", "/v1/functions/{name}/release/mirror" | "/v1/models/{name}/release/mirror") => {
            "release.mirror"
        }
        ("PUT", "/v1/functions/{name}/aliases/{alias}" | "/v1/models/{name}/aliases/{alias}") => "alias.set",
        ("DELETE", "/v1/functions/{name}/aliases/{alias}" | "/v1/models/{name}/aliases/{alias}") => "alias.remove",
        ("POST", "/v1/models") => "model.push",
        ("DELETE", "/v1/models/{name}") => "model.delete",
        ("POST", "/v1/models/{name}/monitor/baseline") => "model.baseline",
        ("PUT", "/v1/files/{name}") => "file.put",
        ("DELETE", "/v1/files/{name}") => "file.delete",
        ("PUT", "/v1/secrets/{name}") => "secret.put",
        ("DELETE", "/v1/secrets/{name}") => "secret.delete",
        _ => return format!("{method} {route}"),
    };
    name.to_string()
}

/// Writes every management action (a `/v1` request that changes something) and every denial
/// (403 anywhere, 401 on `/v1`) to the audit log, with the acting key's id.
async fn audit_trail(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // On every call's path: keep only what is cheap (no header map copy, no strings) until the
    // answer shows there is something to write.
    let v1 = req.uri().path().starts_with("/v1/");
    let management = v1 && !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let before = if management { auth::principal_from_headers(&app, req.headers()).ok() } else { None };
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let response = next.run(req).await;
    let status = response.status();
    // 401s: every one is counted; those with a key (a wrong, revoked or expired one) on /v1 are
    // audited, at most one entry a second (anyone can send them), naming how many were not
    // written; requests without any key are never written.
    let mut skipped = None;
    if status == StatusCode::UNAUTHORIZED {
        app.metrics.unauthenticated(if authorization.is_some() { "invalid_key" } else { "missing_key" });
        if v1 && authorization.is_some() {
            match app.audit.sample_unknown_key() {
                Some(n) => skipped = Some(n),
                None => return response,
            }
        }
    }
    let denied =
        status == StatusCode::FORBIDDEN || (status == StatusCode::UNAUTHORIZED && v1 && authorization.is_some());
    if !management && !denied {
        return response;
    }
    let path = uri.path().to_string();
    let route = route.map_or_else(|| path.clone(), |m| m.as_str().to_string());
    // The actor as it was when the request arrived (a key may have just revoked itself).
    let principal = before.or_else(|| {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization?);
        auth::principal_from_headers(&app, &headers).ok()
    });
    let actor = principal.as_ref().map_or_else(|| "anonymous".to_string(), |p| p.key_id.clone());
    let action = audit_action(&method, &route);
    let target = response.extensions().get::<AuditTarget>().map_or(path.clone(), |t| t.0.clone());
    // A tenant created by the admin is that tenant's first entry; otherwise the actor's tenant.
    let tenant = match &principal {
        Some(p) if action == "tenant.create" && status.is_success() => {
            Some(target.clone()).filter(|_| p.tenant.is_none())
        }
        Some(p) => p.tenant.clone(),
        None => None,
    };
    let outcome = if status.is_success() {
        "ok".to_string()
    } else if denied {
        "denied".to_string()
    } else {
        format!("failed {}", status.as_u16())
    };
    let mut entry = crate::audit::entry(&actor, tenant.as_deref(), &action, Some(&target), &outcome);
    entry.detail = response.extensions().get::<ErrorMessage>().map(|m| m.0.clone());
    if let Some(n) = skipped.filter(|n| *n > 0) {
        let more =
            format!("{n} more requests with an unknown key refused since the last such entry (not written one by one)");
        entry.detail = Some(entry.detail.map_or_else(|| more.clone(), |d| format!("{d}; {more}")));
    }
    app.audit.record(entry).await;
    response
}

/// `GET /v1/devices` (any key): `{"devices":[{"kind":"cpu"|"gpu","name","backend","memory",...}]}`.
async fn devices(State(app): State<Arc<App>>, _principal: crate::tenants::Principal) -> Result<Response, ApiError> {
    let listed = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || app.devices.list().to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("device discovery failed: {e}"))?
    };
    // The adapter the GPU engine runs on also shows the engine's memory budget and use.
    let mut listed = serde_json::to_value(listed).map_err(anyhow::Error::from)?;
    if let (Some(gpu), Some(devices)) = (app.graphs.gpu_if_discovered(), listed.as_array_mut()) {
        let stats = gpu.stats();
        if let Some(serde_json::Value::Object(device)) =
            devices.iter_mut().find(|d| d["kind"] == "gpu" && d["name"] == gpu.adapter_name())
        {
            device.insert("engine".into(), "wgpu".into());
            device.insert("memory_budget".into(), stats.memory_budget.into());
            device.insert("memory_used".into(), stats.memory_used.into());
        }
    }
    Ok(axum::Json(serde_json::json!({ "devices": listed })).into_response())
}

async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Result<Response, ApiError> {
    // Metrics name every tenant and function: they need the admin key or a platform key with
    // the `metrics` role, unless the operator opened them.
    if app.config.server.metrics_require_key {
        auth::principal_from_headers(&app, &headers)?.require_metrics()?;
    }
    let text = app.metrics.scrape(|m| {
        m.observe_graph_cache(app.graphs.stats());
        m.observe_pools(app.config.runtime.max_instances, app.runtime.live_instances(), &app.graphs.pools());
        m.observe_budgets(&budgets(&app));
        m.observe_drift(&app.graphs.monitors.scores());
        if let Some(gpu) = app.graphs.gpu_if_discovered() {
            m.observe_gpu(gpu.stats());
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

/// Each budgeted tenant's month-to-date spend (as admission last saw it) and budget.
fn budgets(app: &crate::app::App) -> Vec<(String, String, f64, f64)> {
    use rust_decimal::prelude::ToPrimitive as _;
    app.metering
        .spend_snapshot()
        .into_iter()
        .filter_map(|(tenant, spent)| {
            let plan = app.config.plans.get(&app.tenants.plan_of(&tenant)?)?;
            let budget = plan.monthly_budget?;
            Some((tenant, plan.currency.clone(), spent.to_f64()?, budget.to_f64()?))
        })
        .collect()
}

/// Gives every request an id, echoes it in `infercell-request-id`, and turns every error
/// response not produced by a function into `{"error","request_id"}`.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = crate::telemetry::request_span(&id, req.method(), req.uri().path(), req.headers());
    let mut response = tracing::Instrument::instrument(next.run(req), span).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && response.extensions().get::<FunctionResponse>().is_none()
    {
        let message = match response.extensions().get::<ErrorMessage>() {
            Some(ErrorMessage(m)) => m.clone(),
            None => {
                let body = std::mem::replace(response.body_mut(), Body::empty());
                let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&text).trim().to_string();
                if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text }
            }
        };
        let (mut parts, _) = response.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        response = Response::from_parts(parts, Body::from(error_body(&message, &id)));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Binds `listen`, prints the address and serves until SIGTERM or Ctrl-C, then drains.
///
/// HTTP/1.1 connections are served by hyper directly (the protocol every client of this API
/// speaks), without the HTTP/2 sniffing of a generic server: on the hot path of small
/// invocations, every microsecond of server CPU is throughput.
pub async fn serve(app: Arc<App>, listen: SocketAddr) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("installing the SIGTERM and Ctrl-C handlers")?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, "listening");
    let service = hyper_util::service::TowerToHyperService::new(router(app.clone()));
    // Canaries are judged once a second, for as long as the server runs.
    let judging = app.clone();
    let judge = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            judging.releases.judge().await;
        }
    });
    let header_read_timeout = app.config.server.header_read_timeout;
    let connections = Arc::new(tokio::sync::Semaphore::new(app.config.server.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving what we have.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(open) = connections.clone().try_acquire_owned() else {
                    app.metrics.connection_refused();
                    tokio::spawn(refuse_connection(stream));
                    continue;
                };
                // A client that never finishes its headers (slow loris) is cut, not waited for.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
                let connection = graceful.watch(connection);
                let gauge = crate::metrics::Open::new(&app.metrics);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop((open, gauge));
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    judge.abort();
    graceful.shutdown().await;
    // Calls whose clients hung up run on without a connection: they end (and are committed)
    // before the process does.
    app.calls.close();
    app.calls.wait().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Answers a connection past `server.max_connections` with a 503 and closes it, without
/// reading its request (and gives up on a client that does not take the answer in a second).
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let body = r#"{"error":"too many connections to this server; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let send = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}

/// Resolves at SIGTERM or Ctrl-C. The signal streams are made here, before the caller prints
/// `listening on`: a stream made later can miss a signal sent the moment that line appears
/// (tokio marks what was delivered before a stream existed as seen), and the server would
/// never stop.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! { _ = term.recv() => {}, _ = interrupt.recv() => {} }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; draining in-flight calls");
    })
}

/// A status code from a number the guest chose, or None if it is not a valid HTTP status.
fn guest_status(status: u16) -> Option<StatusCode> {
    StatusCode::from_u16(status).ok().filter(|s| s.as_u16() >= 100)
}
