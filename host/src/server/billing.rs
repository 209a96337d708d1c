//! Usage and billing reports: `GET /v1/usage`, `GET /v1/billing`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::App;
use crate::error::ApiError;
use crate::metering::billing::Bill;
use crate::metering::{month_bounds, now_us, rfc3339_us};
use crate::tenants::{Principal, Role};

const READERS: &[Role] = &[Role::Owner, Role::Billing];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    tenant: Option<String>,
    function: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Whose report: the caller's tenant, or for the admin key the `tenant=` it names.
async fn report_tenant(app: &App, principal: &Principal, asked: Option<&str>) -> Result<String, ApiError> {
    if principal.role == Role::Admin {
        let tenant =
            asked.ok_or_else(|| ApiError::BadRequest("the admin key must name a tenant: ?tenant=NAME".into()))?;
        if app.tenants.plan_of(tenant).is_none() {
            return Err(ApiError::NotFound(format!("no tenant named `{tenant}`")));
        }
        return Ok(tenant.to_string());
    }
    let own = principal.tenant_with(READERS)?;
    match asked {
        Some(t) if t != own => Err(ApiError::Forbidden("only the admin key may read another tenant's usage".into())),
        _ => Ok(own.to_string()),
    }
}

/// Parses `from`/`to` (RFC 3339 or `YYYY-MM-DD`, UTC midnight) into microseconds; the default
/// is the current calendar month. The range is half-open: `[from, to)`.
pub fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), ApiError> {
    let (month_start, month_end) = month_bounds(now_us());
    let from = from.map(|s| parse_time("from", s)).transpose()?.unwrap_or(month_start);
    let to = to.map(|s| parse_time("to", s)).transpose()?.unwrap_or(month_end);
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    Ok((from, to))
}

fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    if let Ok(d) = time::Date::parse(text, &time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok((d.midnight().assume_utc().unix_timestamp_nanos() / 1000) as i64);
    }
    Err(ApiError::BadRequest(format!(
        "`{name}` = `{text}` is not a date (2026-11-01) or an RFC 3339 time (2026-11-01T12:00:00Z)"
    )))
}

fn query(q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>) -> Result<ReportQuery, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// The query, whose report it is, and its `[from, to)` range: what both reports start with.
async fn scope(
    app: &App,
    principal: &Principal,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(ReportQuery, String, i64, i64), ApiError> {
    let q = query(q)?;
    let tenant = report_tenant(app, principal, q.tenant.as_deref()).await?;
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    Ok((q, tenant, from, to))
}

/// `GET /v1/usage?from&to[&function][&limit&cursor]`: raw usage records, oldest first.
pub async fn usage(
    State(app): State<Arc<App>>,
    principal: Principal,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (q, tenant, from, to) = scope(&app, &principal, q).await?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("`limit` must be between 1 and 1000".into()));
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let parsed = c.split_once(':').and_then(|(us, id)| Some((us.parse::<i64>().ok()?, id.to_string())));
            Some(
                parsed
                    .ok_or_else(|| ApiError::BadRequest("invalid `cursor`: pass back `next_cursor` as given".into()))?,
            )
        }
    };
    let records = app.metering.records(&tenant, from, to, q.function.clone(), cursor, limit).await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|r| format!("{}:{}", r.started_us, r.request_id)))
        .flatten();
    Ok(Json(json!({
        "tenant": tenant,
        "from": rfc3339_us(from),
        "to": rfc3339_us(to),
        "records": records.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// `GET /v1/billing?from&to&format=json|csv[&tenant]`: the bill for a period.
pub async fn billing(
    State(app): State<Arc<App>>,
    principal: Principal,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (q, tenant, from, to) = scope(&app, &principal, q).await?;
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(ApiError::BadRequest(format!("unknown format `{format}` (json or csv)")));
    }
    let plan_name = app.tenants.plan_of(&tenant).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no plan"))?;
    let plan = app.config.plans.get(&plan_name).ok_or_else(|| anyhow::anyhow!("unknown plan {plan_name}"))?;
    let totals = app.metering.totals(&tenant, from, to, q.function.clone()).await?;
    let bill = Bill::new(&tenant, &plan.currency, rfc3339_us(from), rfc3339_us(to), &totals, &plan.prices);
    Ok(match format {
        "csv" => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bill.to_csv()).into_response(),
        _ => Json(bill.to_json()).into_response(),
    })
}
