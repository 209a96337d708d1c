//! Client commands: thin wrappers over the HTTP API.

mod functions;
mod http;
mod releases;
mod summary;

use std::path::Path;

use anyhow::{Context as _, bail};
use reqwest::multipart::{Form, Part};

use self::functions::{deploy, inspect, inspect_deployed, invoke};
use self::http::{Client, server_error};
use self::summary::{bill_table, join, short_digest, tensors};
use super::{Command, FilesCommand, FunctionsCommand, KeysCommand, ModelCommand, SecretsCommand, TenantCommand};

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
        Command::Deploy { dir, release, canary, steps, force, client } => {
            deploy(&Client::new(&client)?, &dir, &releases::deploy_query(release, canary, &steps, force)).await?
        }
        Command::Release(command) => releases::release(command).await?,
        Command::Alias(command) => releases::alias(command).await?,
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
        Command::Functions(FunctionsCommand::Diff { name, from, to, client }) => {
            let c = Client::new(&client)?;
            let v = c.send_json(c.request(reqwest::Method::GET, &format!("/v1/functions/{name}"))?).await?;
            let diff = releases::diff(&name, &v, from, to)?;
            c.print(&diff, releases::diff_summary);
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
        Command::Model(ModelCommand::Monitor { name, version, baseline, client }) => {
            let c = Client::new(&client)?;
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let request = match baseline {
                Some(_) => c
                    .request(reqwest::Method::POST, &format!("/v1/models/{name}/monitor/baseline"))?
                    .json(&serde_json::json!({"version": version})),
                None => c.request(reqwest::Method::GET, &format!("/v1/models/{name}/monitor{query}"))?,
            };
            let v = c.send_json(request).await?;
            c.print(&v, summary::monitor);
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
                    "{:<27} {:<8} {:<16} {:>4} {:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
                    "STARTED",
                    "KIND",
                    "NAME",
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
                        "\n{:<27} {:<8} {:<16} {:>4} {:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
                        r["started_at"].as_str().unwrap_or_default(),
                        r["kind"].as_str().unwrap_or_default(),
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
