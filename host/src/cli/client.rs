//! Client commands: thin wrappers over the HTTP API.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::{
    ClientArgs, Command, FilesCommand, FunctionsCommand, KeysCommand, ModelCommand, SecretsCommand, TenantCommand,
};
use crate::registry::Manifest;

struct Client {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    json: bool,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            url: args.url.trim_end_matches('/').to_string(),
            key: args.key.clone(),
            json: args.json,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let key = self.key.as_deref().context("no API key: set INFERCELL_KEY (or pass --key)")?;
        Ok(self.http.request(method, format!("{}{path}", self.url)).bearer_auth(key))
    }

    /// Sends and returns the JSON body of a 2xx answer; otherwise the server's error message.
    async fn send_json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = req.send().await.with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{}", server_error(status, &body));
        }
        serde_json::from_slice(&body).context("the server's answer is not JSON")
    }

    /// Sends a request whose success has no body (204); otherwise the server's error message.
    async fn send_empty(&self, req: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let response = req.send().await.with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            bail!("{}", server_error(status, &response.bytes().await?));
        }
        Ok(())
    }

    /// Prints the answer (JSON or the summary); a closed stdout (`| head`) is not an error.
    fn print(&self, value: &Value, summary: impl FnOnce(&Value) -> String) {
        use std::io::Write as _;
        let text = if self.json { serde_json::to_string_pretty(value).unwrap_or_default() } else { summary(value) };
        let _ = writeln!(std::io::stdout(), "{text}");
    }
}

fn server_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("error").is_some() => format!(
            "{} (HTTP {}, request id {})",
            v["error"].as_str().unwrap_or_default(),
            status.as_u16(),
            v["request_id"].as_str().unwrap_or("-")
        ),
        _ => format!("HTTP {}: {}", status, String::from_utf8_lossy(body).trim()),
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::NnProbe { .. } | Command::Model(ModelCommand::Check { .. }) => {
            unreachable!("handled by the caller")
        }
        Command::Tenant(TenantCommand::Create { name, plan, client }) => {
            let c = Client::new(&client)?;
            let v = c
                .send_json(
                    c.request(reqwest::Method::POST, "/v1/tenants")?
                        .json(&serde_json::json!({"name": name, "plan": plan})),
                )
                .await?;
            c.print(&v, |v| {
                format!(
                    "created tenant {} (plan {})\napi key (shown once): {}",
                    v["tenant"].as_str().unwrap_or_default(),
                    v["plan"].as_str().unwrap_or_default(),
                    v["api_key"].as_str().unwrap_or_default()
                )
            });
        }
        Command::Tenant(TenantCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/tenants")?).await?;
            c.print(&v, |v| {
                let mut out = format!("{:<32} {:<10} {}", "TENANT", "PLAN", "CREATED");
                for t in v["tenants"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32} {:<10} {}",
                        t["name"].as_str().unwrap_or_default(),
                        t["plan"].as_str().unwrap_or_default(),
                        t["created_at"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Devices { client } => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/devices")?).await?;
            c.print(&v, |v| {
                let mut out = format!("{:<5} {:<8} {:<10} {:>16}  {}", "KIND", "BACKEND", "TYPE", "MEMORY", "NAME");
                for d in v["devices"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<5} {:<8} {:<10} {:>16}  {}",
                        d["kind"].as_str().unwrap_or_default(),
                        d["backend"].as_str().unwrap_or_default(),
                        d["device_type"].as_str().unwrap_or("-"),
                        d["memory"].to_string(),
                        d["name"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Files(FilesCommand::Put { name, file, client }) => {
            let c = Client::new(&client)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let v = c.send_json(c.request(reqwest::Method::PUT, &format!("/v1/files/{name}"))?.body(bytes)).await?;
            c.print(&v, |v| {
                format!(
                    "put file {} ({}, {} bytes)",
                    v["name"].as_str().unwrap_or_default(),
                    short_digest(v["digest"].as_str().unwrap_or_default()),
                    v["size"]
                )
            });
        }
        Command::Files(FilesCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/files")?).await?;
            c.print(&v, |v| {
                let mut out = format!("{:<32} {:>10}  {:<20} {}", "FILE", "SIZE", "DIGEST", "UPDATED");
                for f in v["files"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32} {:>10}  {:<20} {}",
                        f["name"].as_str().unwrap_or_default(),
                        f["size"].to_string(),
                        short_digest(f["digest"].as_str().unwrap_or_default()),
                        f["updated_at"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Files(FilesCommand::Delete { name, client }) => {
            let c = Client::new(&client)?;
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/v1/files/{name}"))?).await?;
            c.print(&serde_json::json!({ "deleted": name }), |_| format!("deleted file {name}"));
        }
        Command::Secrets(SecretsCommand::Put { name, value, file, client }) => {
            let c = Client::new(&client)?;
            let bytes = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                _ => bail!("give the value with exactly one of --value or --file"),
            };
            let v = c.send_json(c.request(reqwest::Method::PUT, &format!("/v1/secrets/{name}"))?.body(bytes)).await?;
            c.print(&v, |v| {
                format!("put secret {} (sealed; it is never shown again)", v["name"].as_str().unwrap_or_default())
            });
        }
        Command::Secrets(SecretsCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/secrets")?).await?;
            c.print(&v, |v| {
                let mut out = format!("{:<32} {}", "SECRET", "UPDATED");
                for s in v["secrets"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32} {}",
                        s["name"].as_str().unwrap_or_default(),
                        s["updated_at"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Secrets(SecretsCommand::Delete { name, client }) => {
            let c = Client::new(&client)?;
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/v1/secrets/{name}"))?).await?;
            c.print(&serde_json::json!({ "deleted": name }), |_| format!("deleted secret {name}"));
        }
        Command::Keys(KeysCommand::Create { role, name, expires_at, client }) => {
            let c = Client::new(&client)?;
            let body = serde_json::json!({ "role": role, "name": name, "expires_at": expires_at });
            let v = c.send_json(c.request(reqwest::Method::POST, "/v1/keys")?.json(&body)).await?;
            c.print(&v, |v| {
                format!(
                    "created key {} (role {})\napi key (shown once): {}",
                    v["id"].as_str().unwrap_or_default(),
                    v["role"].as_str().unwrap_or_default(),
                    v["api_key"].as_str().unwrap_or_default()
                )
            });
        }
        Command::Keys(KeysCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/keys")?).await?;
            c.print(&v, |v| {
                let mut out = format!(
                    "{:<26} {:<9} {:<14} {:<16} {:<22} {}",
                    "ID", "ROLE", "PREFIX", "NAME", "LAST USED", "EXPIRES"
                );
                for k in v["keys"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<26} {:<9} {:<14} {:<16} {:<22} {}",
                        k["id"].as_str().unwrap_or_default(),
                        k["role"].as_str().unwrap_or_default(),
                        k["prefix"].as_str().unwrap_or_default(),
                        k["name"].as_str().unwrap_or("-"),
                        k["last_used_at"].as_str().unwrap_or("never"),
                        k["expires_at"].as_str().unwrap_or("never"),
                    ));
                }
                out
            });
        }
        Command::Keys(KeysCommand::Revoke { id, client }) => {
            let c = Client::new(&client)?;
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/v1/keys/{id}"))?).await?;
            c.print(&serde_json::json!({ "revoked": id }), |_| format!("revoked key {id}"));
        }
        Command::Audit { tenant, after, limit, client } => {
            let c = Client::new(&client)?;
            let mut query = vec![("limit", limit.to_string())];
            if let Some(t) = tenant {
                query.push(("tenant", t));
            }
            if let Some(a) = after {
                query.push(("after", a.to_string()));
            }
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/audit")?.query(&query)).await?;
            c.print(&v, |v| {
                let mut out = format!(
                    "{:>6} {:<28} {:<26} {:<12} {:<18} {:<10} {}",
                    "SEQ", "TIME", "ACTOR", "TENANT", "ACTION", "OUTCOME", "TARGET"
                );
                for e in v["entries"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:>6} {:<28} {:<26} {:<12} {:<18} {:<10} {}",
                        e["seq"].to_string(),
                        e["time"].as_str().unwrap_or_default(),
                        e["actor"].as_str().unwrap_or_default(),
                        e["tenant"].as_str().unwrap_or("-"),
                        e["action"].as_str().unwrap_or_default(),
                        e["outcome"].as_str().unwrap_or_default(),
                        e["target"].as_str().unwrap_or("-"),
                    ));
                }
                out
            });
        }
        Command::Deploy { dir, client } => deploy(&Client::new(&client)?, &dir).await?,
        Command::Functions(FunctionsCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/functions")?).await?;
            c.print(&v, |v| {
                let mut out =
                    format!("{:<32} {:>7} {:>8}  {:<20} {}", "FUNCTION", "LATEST", "VERSIONS", "DIGEST", "UPDATED");
                for f in v["functions"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32} {:>7} {:>8}  {:<20} {}",
                        f["name"].as_str().unwrap_or_default(),
                        f["latest_version"].to_string(),
                        f["versions"].to_string(),
                        short_digest(f["digest"].as_str().unwrap_or_default()),
                        f["updated_at"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Functions(FunctionsCommand::Get { name, client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, &format!("/v1/functions/{name}"))?).await?;
            c.print(&v, |v| {
                let mut out =
                    format!("{} (latest version {})", v["name"].as_str().unwrap_or_default(), v["latest_version"]);
                for ver in v["versions"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n  @{:<4} {}  {} bytes  {}\n        imports: {}",
                        ver["version"],
                        short_digest(ver["digest"].as_str().unwrap_or_default()),
                        ver["size"],
                        ver["created_at"].as_str().unwrap_or_default(),
                        join(&ver["imports"])
                    ));
                }
                out
            });
        }
        Command::Functions(FunctionsCommand::Delete { name, client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::DELETE, &format!("/v1/functions/{name}"))?).await?;
            c.print(&v, |v| {
                format!("deleted {} ({} versions)", v["name"].as_str().unwrap_or_default(), v["deleted_versions"])
            });
        }
        Command::Functions(FunctionsCommand::Logs { name, limit, client }) => {
            let c = Client::new(&client)?;
            let v = c
                .send_json(c.request(reqwest::Method::GET, &format!("/v1/functions/{name}/logs?limit={limit}"))?)
                .await?;
            c.print(&v, |v| {
                v["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| {
                        format!(
                            "{} @{} {:<6} {}",
                            l["time"].as_str().unwrap_or_default(),
                            l["version"],
                            l["level"].as_str().unwrap_or_default(),
                            l["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Invoke { target, data, method, headers, client } => {
            invoke(&Client::new(&client)?, &target, data, method, headers).await?
        }
        Command::Inspect { target, client } => {
            if Path::new(&target).is_file() || target.ends_with(".wasm") {
                inspect(Path::new(&target), client.json)?;
            } else {
                inspect_deployed(&Client::new(&client)?, &target).await?;
            }
        }
        Command::Model(ModelCommand::Push { name, file, engine, device, description, client }) => {
            let c = Client::new(&client)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut manifest = toml::Table::new();
            manifest.insert("name".into(), name.into());
            manifest.insert("engine".into(), engine.into());
            manifest.insert("device".into(), device.into());
            if let Some(d) = description {
                manifest.insert("description".into(), d.into());
            }
            let file_name =
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
            let form = Form::new()
                .part("manifest", Part::text(toml::to_string(&manifest)?).mime_str("application/toml")?)
                .part("model", Part::bytes(bytes).file_name(file_name).mime_str("application/octet-stream")?);
            let v = c.send_json(c.request(reqwest::Method::POST, "/v1/models")?.multipart(form)).await?;
            c.print(&v, |v| {
                format!(
                    "pushed model {}@{} ({}, {} bytes, engine {})\ninputs:  {}\noutputs: {}",
                    v["name"].as_str().unwrap_or_default(),
                    v["version"],
                    short_digest(v["digest"].as_str().unwrap_or_default()),
                    v["size"],
                    v["engine"].as_str().unwrap_or_default(),
                    tensors(&v["inputs"]),
                    tensors(&v["outputs"])
                )
            });
        }
        Command::Model(ModelCommand::List { client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/models")?).await?;
            c.print(&v, |v| {
                let mut out = format!(
                    "{:<32} {:>7} {:>10} {:<8} {:<20} {}",
                    "MODEL", "LATEST", "SIZE", "ENGINE", "DIGEST", "UPDATED"
                );
                for m in v["models"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32} {:>7} {:>10} {:<8} {:<20} {}",
                        m["name"].as_str().unwrap_or_default(),
                        m["latest_version"].to_string(),
                        m["size"].to_string(),
                        m["engine"].as_str().unwrap_or_default(),
                        short_digest(m["digest"].as_str().unwrap_or_default()),
                        m["updated_at"].as_str().unwrap_or_default()
                    ));
                }
                out
            });
        }
        Command::Model(ModelCommand::Get { name, client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, &format!("/v1/models/{name}"))?).await?;
            c.print(&v, |v| {
                format!(
                    "{} (latest version {}, {} bytes, {})\ninputs:  {}\noutputs: {}",
                    v["name"].as_str().unwrap_or_default(),
                    v["latest_version"],
                    v["size"],
                    short_digest(v["digest"].as_str().unwrap_or_default()),
                    tensors(&v["inputs"]),
                    tensors(&v["outputs"])
                )
            });
        }
        Command::Model(ModelCommand::Delete { name, client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::DELETE, &format!("/v1/models/{name}"))?).await?;
            c.print(&v, |v| {
                format!("deleted model {} ({} versions)", v["name"].as_str().unwrap_or_default(), v["deleted_versions"])
            });
        }
        Command::Billing { from, to, format, tenant, client } => {
            let c = Client::new(&client)?;
            let format = if c.json { "json".to_string() } else { format };
            if !matches!(format.as_str(), "table" | "json" | "csv") {
                bail!("--format must be table, json or csv");
            }
            let mut query = vec![("format", if format == "csv" { "csv".to_string() } else { "json".to_string() })];
            query.extend(from.map(|v| ("from", v)));
            query.extend(to.map(|v| ("to", v)));
            query.extend(tenant.map(|v| ("tenant", v)));
            let req = c.request(reqwest::Method::GET, "/v1/billing")?.query(&query);
            if format == "csv" {
                let response = req.send().await.with_context(|| format!("cannot reach the server at {}", c.url))?;
                let status = response.status();
                let body = response.bytes().await?;
                if !status.is_success() {
                    bail!("{}", server_error(status, &body));
                }
                print!("{}", String::from_utf8_lossy(&body));
            } else {
                let v = c.send_json(req).await?;
                if format == "json" {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{}", bill_table(&v));
                }
            }
        }
        Command::Usage { from, to, function, limit, tenant, client } => {
            let c = Client::new(&client)?;
            let mut query = vec![("limit", limit.to_string())];
            query.extend(from.map(|v| ("from", v)));
            query.extend(to.map(|v| ("to", v)));
            query.extend(function.map(|v| ("function", v)));
            query.extend(tenant.map(|v| ("tenant", v)));
            let v = c.send_json(c.request(reqwest::Method::GET, "/v1/usage")?.query(&query)).await?;
            c.print(&v, |v| {
                let mut out = format!(
                    "{:<27} {:<16} {:>4} {:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
                    "STARTED",
                    "FUNCTION",
                    "VER",
                    "OUTCOME",
                    "STATUS",
                    "GUEST MS",
                    "FUEL",
                    "NN CPU MS",
                    "GPU MS",
                    "IN",
                    "OUT"
                );
                for r in v["records"].as_array().into_iter().flatten() {
                    let m = &r["meters"];
                    out.push_str(&format!(
                        "\n{:<27} {:<16} {:>4} {:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
                        r["started_at"].as_str().unwrap_or_default(),
                        r["function"].as_str().unwrap_or_default(),
                        r["version"].to_string(),
                        r["outcome"].as_str().unwrap_or_default(),
                        r["status"].to_string(),
                        m["guest_ms"].as_str().unwrap_or_default(),
                        m["fuel"].as_str().unwrap_or_default(),
                        m["nn_cpu_ms"].as_str().unwrap_or_default(),
                        m["nn_gpu_ms"].as_str().unwrap_or_default(),
                        m["bytes_in"].as_str().unwrap_or_default(),
                        m["bytes_out"].as_str().unwrap_or_default(),
                    ));
                }
                out
            });
        }
    }
    Ok(())
}

/// A bill as a readable table.
fn bill_table(v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let currency = s(&v["currency"]);
    let mut out = format!("Bill for {}, {} to {} ({currency})\n\n", s(&v["tenant"]), s(&v["from"]), s(&v["to"]));
    out.push_str(&format!(
        "{:<20} {:<14} {:>22} {:>16} {:>24}\n",
        "FUNCTION", "METER", "QUANTITY", "UNIT PRICE", "AMOUNT"
    ));
    for l in v["lines"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<14} {:>22} {:>16} {:>24}\n",
            s(&l["function"]),
            s(&l["meter"]),
            s(&l["quantity"]),
            s(&l["unit_price"]),
            s(&l["amount"])
        ));
    }
    out.push_str(&format!("\n{:<20} {:>12} {:>24} {:>24}\n", "FUNCTION", "INVOCATIONS", "COST", "COST PER 1000"));
    for f in v["functions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:>12} {:>24} {:>24}\n",
            s(&f["function"]),
            f["invocations"].to_string(),
            s(&f["cost"]),
            s(&f["cost_per_1000"])
        ));
    }
    out.push_str(&format!("\nTOTAL      {} {currency}\nTOTAL DUE  {} {currency}", s(&v["total"]), s(&v["total_due"])));
    out
}

/// `input FP32 [-1, 64], ...`
fn tensors(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let shape: Vec<String> = t["shape"].as_array().into_iter().flatten().map(|d| d.to_string()).collect();
            format!(
                "{} {} [{}]",
                t["name"].as_str().unwrap_or_default(),
                t["datatype"].as_str().unwrap_or_default(),
                shape.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_digest(d: &str) -> String {
    d.chars().take(19).collect()
}

/// Import names grouped by package and version: `wasi:io/{error,poll,streams}@0.2.6, ...`.
fn join(v: &Value) -> String {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for name in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let (path, version) = name.split_once('@').unwrap_or((name, ""));
        let (package, interface) = path.split_once('/').unwrap_or((path, ""));
        match groups.iter_mut().find(|(p, v, _)| p == package && v == version) {
            Some((_, _, interfaces)) => interfaces.push(interface.to_string()),
            None => groups.push((package.to_string(), version.to_string(), vec![interface.to_string()])),
        }
    }
    if groups.is_empty() {
        return "(none)".into();
    }
    groups
        .into_iter()
        .map(|(package, version, interfaces)| {
            let at = if version.is_empty() { String::new() } else { format!("@{version}") };
            if interfaces.len() == 1 {
                format!("{package}/{}{at}", interfaces[0])
            } else {
                format!("{package}/{{{}}}{at}", interfaces.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn deploy(c: &Client, dir: &Path) -> anyhow::Result<()> {
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
    let result = c.send_json(c.request(reqwest::Method::POST, "/v1/functions")?.multipart(form)).await;
    bar.finish_and_clear();
    let v = result?;
    c.print(&v, |v| {
        format!(
            "deployed {}@{} ({}, {} bytes)\nimports: {}",
            v["name"].as_str().unwrap_or_default(),
            v["version"],
            short_digest(v["digest"].as_str().unwrap_or_default()),
            v["size"],
            join(&v["imports"])
        )
    });
    Ok(())
}

async fn invoke(
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
async fn inspect_deployed(c: &Client, target: &str) -> anyhow::Result<()> {
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

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
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
