//! `infercell release ...`, `infercell alias ...` and the release flags of `deploy`.

use anyhow::Context as _;
use serde_json::{Value, json};

use super::http::Client;
use crate::cli::{AliasCommand, CanaryArgs, ReleaseCommand, ReleaseTarget};

/// The query string of `deploy --release` / `deploy --canary P [--step ...]`.
pub(super) fn deploy_query(
    release: bool,
    canary: Option<u32>,
    steps: &CanaryArgs,
    force: bool,
) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if force {
        query.push(("force", "true".to_string()));
    }
    if release {
        query.push(("release", "true".to_string()));
    }
    if let Some(percent) = canary {
        query.push(("canary", percent.to_string()));
        let CanaryArgs { step, interval, max_error_rate, max_p99_ms, min_requests } = steps;
        let given = [
            ("step", step.map(|v| v.to_string())),
            ("interval", interval.clone()),
            ("max_error_rate", max_error_rate.map(|v| v.to_string())),
            ("max_p99_ms", max_p99_ms.map(|v| v.to_string())),
            ("min_requests", min_requests.map(|v| v.to_string())),
        ];
        query.extend(given.into_iter().filter_map(|(name, value)| Some((name, value?))));
    }
    query
}

fn base(target: &ReleaseTarget) -> String {
    let kind = if target.model { "models" } else { "functions" };
    format!("/v1/{kind}/{}", target.name)
}

pub(super) async fn release(command: ReleaseCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let (client, target, method, path, body) = match command {
        ReleaseCommand::Status { target, client } => (client, target, Method::GET, "release", None),
        ReleaseCommand::Set { target, version, force, client } => {
            (client, target, Method::PUT, "release", Some(json!({ "version": version, "force": force })))
        }
        ReleaseCommand::Canary { target, version, percent, steps, force, client } => {
            let CanaryArgs { step, interval, max_error_rate, max_p99_ms, min_requests } = steps;
            let body = json!({
                "version": version, "percent": percent, "step": step, "interval": interval,
                "max_error_rate": max_error_rate, "max_p99_ms": max_p99_ms, "min_requests": min_requests,
                "force": force,
            });
            (client, target, Method::POST, "release/canary", Some(body))
        }
        ReleaseCommand::Promote { target, client } => (client, target, Method::POST, "release/promote", None),
        ReleaseCommand::Rollback { target, to, force, client } => {
            (client, target, Method::POST, "release/rollback", Some(json!({ "to": to, "force": force })))
        }
        ReleaseCommand::Mirror { target, off: true, client, .. } => {
            (client, target, Method::DELETE, "release/mirror", None)
        }
        ReleaseCommand::Mirror { target, version, percent, client, .. } => {
            (client, target, Method::PUT, "release/mirror", Some(json!({ "version": version, "percent": percent })))
        }
    };
    let c = Client::new(&client)?;
    let mut request = c.request(method, &format!("{}/{path}", base(&target)))?;
    if let Some(body) = body {
        request = request.json(&body);
    }
    let v = c.send_json(request).await?;
    c.print(&v, status_summary);
    Ok(())
}

pub(super) async fn alias(command: AliasCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let (c, request) = match command {
        AliasCommand::Set { target, alias, version, client } => {
            let c = Client::new(&client)?;
            let request = c
                .request(Method::PUT, &format!("{}/aliases/{alias}", base(&target)))?
                .json(&json!({ "version": version }));
            (c, request)
        }
        AliasCommand::List { target, client } => {
            let c = Client::new(&client)?;
            let request = c.request(Method::GET, &format!("{}/aliases", base(&target)))?;
            (c, request)
        }
        AliasCommand::Rm { target, alias, client } => {
            let c = Client::new(&client)?;
            let request = c.request(Method::DELETE, &format!("{}/aliases/{alias}", base(&target)))?;
            (c, request)
        }
    };
    let v = c.send_json(request).await?;
    c.print(&v, |v| aliases_summary(&v["aliases"]));
    Ok(())
}

fn aliases_summary(aliases: &Value) -> String {
    let Some(aliases) = aliases.as_object().filter(|a| !a.is_empty()) else { return "no aliases".into() };
    let mut out = format!("{:<24} {}", "ALIAS", "VERSION");
    for (alias, version) in aliases {
        out.push_str(&format!("\n{alias:<24} @{version}"));
    }
    out
}

fn version(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_string(), |v| format!("@{v}"))
}

/// A release status, readable.
fn status_summary(v: &Value) -> String {
    let name = v["function"].as_str().or(v["model"].as_str()).unwrap_or_default();
    let mut out = match v["stable"].as_u64() {
        Some(stable) => format!("{name}: stable @{stable} (previous {})", version(&v["previous"])),
        None => format!("{name}: no release set; the newest version {} serves", version(&v["serving"])),
    };
    let canary = &v["canary"];
    if canary.is_object() {
        out.push_str(&format!(
            "\ncanary @{} at {}%: {}",
            canary["version"],
            canary["percent"],
            canary["state"].as_str().unwrap_or_default()
        ));
        if let Some(step) = canary["step"].as_u64() {
            out.push_str(&format!(", +{step}% every {}", canary["interval"].as_str().unwrap_or_default()));
        }
        let now = &canary["interval_figures"]["canary"];
        if now.is_object() {
            out.push_str(&format!(
                "\n  this interval: {} calls, error rate {:.3}, p99 {:.1} ms",
                now["calls"],
                now["error_rate"].as_f64().unwrap_or_default(),
                now["p99_ms"].as_f64().unwrap_or_default()
            ));
        }
    }
    let mirror = &v["mirror"];
    if mirror.is_object() {
        let agreement = mirror["agreement"].as_f64().map_or_else(|| "-".to_string(), |a| format!("{:.1}%", a * 100.0));
        out.push_str(&format!(
            "\nmirror @{} at {}%: {} calls, error rate {:.3}, p99 {:.1} ms, agreement {agreement}",
            mirror["version"],
            mirror["percent"],
            mirror["calls"],
            mirror["error_rate"].as_f64().unwrap_or_default(),
            mirror["p99_ms"].as_f64().unwrap_or_default()
        ));
    }
    if v["aliases"].as_object().is_some_and(|a| !a.is_empty()) {
        out.push('\n');
        out.push_str(&aliases_summary(&v["aliases"]));
    }
    let history = v["history"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !history.is_empty() {
        out.push_str("\nhistory:");
        for h in history.iter().rev().take(10).rev() {
            out.push_str(&format!(
                "\n  {}  {:<8} {} -> {}  {}",
                h["at"].as_str().unwrap_or_default(),
                h["event"].as_str().unwrap_or_default(),
                version(&h["from"]),
                version(&h["to"]),
                h["reason"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

/// `functions diff F A B`: `{"function","from","to","changes":[{"field","from","to"}]}` from a
/// `GET /v1/functions/F` answer; fields are `digest`, `size`, `imports`, `capabilities.*`,
/// `limits.*`, `model_pins`, `smoke`, `description`.
pub(super) fn diff(name: &str, function: &Value, from: u32, to: u32) -> anyhow::Result<Value> {
    let find = |n: u32| {
        function["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["version"] == n))
            .with_context(|| format!("{name} has no version {n}"))
    };
    let (a, b) = (find(from)?, find(to)?);
    let mut changes = Vec::new();
    let mut compare = |field: String, x: &Value, y: &Value| {
        if x != y {
            changes.push(json!({ "field": field, "from": x, "to": y }));
        }
    };
    for field in ["digest", "size", "imports", "model_pins"] {
        compare(field.to_string(), &a[field], &b[field]);
    }
    compare("smoke".into(), &a["smoke"]["passed"], &b["smoke"]["passed"]);
    compare("description".into(), &a["manifest"]["description"], &b["manifest"]["description"]);
    for section in ["limits", "capabilities"] {
        let keys: std::collections::BTreeSet<&String> = [&a["manifest"][section], &b["manifest"][section]]
            .iter()
            .filter_map(|v| v.as_object())
            .flat_map(|o| o.keys())
            .collect();
        for key in keys {
            compare(format!("{section}.{key}"), &a["manifest"][section][key], &b["manifest"][section][key]);
        }
    }
    Ok(json!({ "function": name, "from": from, "to": to, "changes": changes }))
}

pub(super) fn diff_summary(v: &Value) -> String {
    let name = v["function"].as_str().unwrap_or_default();
    let changes = v["changes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if changes.is_empty() {
        return format!("{name}@{} and @{}: no differences", v["from"], v["to"]);
    }
    let mut out = format!("{name}@{} -> @{}", v["from"], v["to"]);
    for change in changes {
        let field = change["field"].as_str().unwrap_or_default();
        if let (Some(x), Some(y)) = (change["from"].as_array(), change["to"].as_array()) {
            let removed: Vec<String> = x.iter().filter(|i| !y.contains(i)).map(Value::to_string).collect();
            let added: Vec<String> = y.iter().filter(|i| !x.contains(i)).map(Value::to_string).collect();
            out.push_str(&format!("\n  {field}: -[{}] +[{}]", removed.join(", "), added.join(", ")));
        } else {
            out.push_str(&format!("\n  {field}: {} -> {}", change["from"], change["to"]));
        }
    }
    out
}
