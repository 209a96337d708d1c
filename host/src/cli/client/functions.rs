//! The function commands that do more than one request and a print: deploying with upload
//! progress, invoking a function, and inspecting a component file or a deployed version.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::http::{Client, server_error};
use super::summary::{join, short_digest};
use crate::registry::Manifest;

pub(super) async fn deploy(c: &Client, dir: &Path, query: &[(&str, String)]) -> anyhow::Result<()> {
    let manifest_path = dir.join("function.toml");
    let manifest_text =
        std::fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&manifest_text)
        .map_err(anyhow::Error::msg)
        .with_context(|| manifest_path.display().to_string())?;
    let component_rel = manifest
        .component
        .as_deref()
        .with_context(|| format!("{}: set `component` to the path of the .wasm file", manifest_path.display()))?;
    let component_path = dir.join(component_rel);
    let bytes = std::fs::read(&component_path).with_context(|| {
        format!("reading {} (build it first, e.g. scripts/build-samples.sh)", component_path.display())
    })?;
    let len = bytes.len() as u64;

    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 << 10).map(<[u8]>::to_vec).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        if progress.position() >= len {
            progress.set_style(
                ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            progress.set_message("compiling on the server");
            progress.enable_steady_tick(Duration::from_millis(100));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let file_name =
        component_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "component.wasm".into());
    let form = Form::new().part("manifest", Part::text(manifest_text).mime_str("application/toml")?).part(
        "component",
        Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(file_name)
            .mime_str("application/wasm")?,
    );
    let result = c.send_json(c.request(reqwest::Method::POST, "/v1/functions")?.query(query).multipart(form)).await;
    bar.finish_and_clear();
    let v = result?;
    c.print(&v, |v| {
        let name = v["name"].as_str().unwrap_or_default();
        let mut out = format!(
            "deployed {name}@{} ({}, {} bytes)\nimports: {}",
            v["version"],
            short_digest(v["digest"].as_str().unwrap_or_default()),
            v["size"],
            join(&v["imports"])
        );
        let canary = &v["release"]["canary"];
        if canary["version"] == v["version"] && canary["state"] == "progressing" {
            out.push_str(&format!(
                "\ncanary: {}% of the calls, beside stable @{} (infercell release status {name})",
                canary["percent"], v["release"]["stable"]
            ));
        } else if v["serving"] == false {
            out.push_str(&format!(
                "\nnot serving yet: {name} has a release (infercell release set {name} {}, or release canary)",
                v["version"]
            ));
        }
        out
    });
    Ok(())
}

pub(super) async fn invoke(
    c: &Client,
    target: &str,
    data: Option<String>,
    method: Option<String>,
    headers: Vec<String>,
) -> anyhow::Result<()> {
    let target = target.trim_start_matches('/');
    if target.split('/').filter(|s| !s.is_empty()).count() < 2 {
        bail!("target must be TENANT/FUNCTION[@VERSION][/PATH], got `{target}`");
    }
    let body = match data.as_deref() {
        None => None,
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Some(buf)
        }
        Some(d) if d.starts_with('@') => Some(std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?),
        Some(d) => Some(d.as_bytes().to_vec()),
    };
    let method = match method {
        Some(m) => reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).context("invalid --method")?,
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let mut req = c.request(method, &format!("/fn/{target}"))?;
    for h in &headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header `{h}` must be `Name: value`"))?;
        req = req.header(name.trim(), value.trim());
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let response = req.send().await.with_context(|| format!("cannot reach the server at {}", c.url))?;
    let status = response.status();
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let usage = header("infercell-usage");
    let request_id = header("infercell-request-id");
    let body = response.bytes().await?;
    if c.json {
        let v = serde_json::json!({
            "status": status.as_u16(),
            "request_id": request_id,
            "usage": usage,
            "body": String::from_utf8_lossy(&body),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        if !status.is_success() {
            std::process::exit(1);
        }
        return Ok(());
    }
    if !status.is_success() {
        bail!("{}", server_error(status, &body));
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `inspect NAME[@N]`: a deployed version's imports, the grants they need, and its grants.
pub(super) async fn inspect_deployed(c: &Client, target: &str) -> anyhow::Result<()> {
    let (name, version) = match target.split_once('@') {
        Some((name, v)) => (name, Some(v.parse::<u64>().with_context(|| format!("`{v}` is not a version number"))?)),
        None => (target, None),
    };
    let v = c.send_json(c.request(reqwest::Method::GET, &format!("/v1/functions/{name}"))?).await?;
    let versions = v["versions"].as_array().cloned().unwrap_or_default();
    let chosen = match version {
        Some(n) => versions.iter().find(|x| x["version"].as_u64() == Some(n)).cloned(),
        None => versions.last().cloned(),
    }
    .with_context(|| format!("function `{name}` has no version {}", version.map_or("".into(), |n| n.to_string())))?;
    let imports: Vec<String> =
        chosen["imports"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    let needed = crate::runtime::grants_needed(&imports);
    let capabilities = &chosen["manifest"]["capabilities"];
    let report = serde_json::json!({
        "name": name,
        "version": chosen["version"],
        "digest": chosen["digest"],
        "imports": imports,
        "needs": needed.iter().map(|(g, why)| serde_json::json!({ "grant": g, "why": why })).collect::<Vec<_>>(),
        "grants": capabilities,
        "limits": chosen["manifest"]["limits"],
    });
    c.print(&report, |r| {
        let mut out = format!(
            "{name}@{} {}\nimports: {}\nneeds:",
            r["version"],
            r["digest"].as_str().unwrap_or_default(),
            join(&r["imports"])
        );
        if needed.is_empty() {
            out.push_str(" no grants");
        }
        for (grant, why) in &needed {
            out.push_str(&format!("\n  {grant:<14} {why}"));
        }
        out.push_str("\ngrants:");
        let granted = capabilities.as_object().filter(|o| !o.is_empty());
        match granted {
            None => out.push_str(" none (deny by default)"),
            Some(map) => {
                for (k, v) in map {
                    out.push_str(&format!("\n  {k:<14} {v}"));
                }
            }
        }
        out.push_str(&format!("\nlimits: {}", r["limits"]));
        out
    });
    Ok(())
}

pub(super) fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let report = crate::runtime::inspect(&bytes)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}", file.display());
    println!("exports:");
    for e in &report.exports {
        println!("  {e}");
    }
    println!("imports:");
    for i in &report.imports {
        let mark = if report.unsupported_imports.contains(i) { "  (not provided by this platform)" } else { "" };
        println!("  {i}{mark}");
    }
    let needed = crate::runtime::grants_needed(&report.imports);
    if !needed.is_empty() {
        println!("needs grants:");
        for (grant, why) in needed {
            println!("  {grant:<14} {why}");
        }
    }
    match &report.problem {
        None => println!("runnable: yes"),
        Some(p) => println!("runnable: no: {p}"),
    }
    Ok(())
}
