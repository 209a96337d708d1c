//! Command line: `infercell serve` runs the server; every other command is a client of a
//! server at `INFERCELL_URL` authenticated with `INFERCELL_KEY`. Client commands print a
//! readable summary, or the server's JSON with `--json`; errors are one line on stderr and a
//! non-zero exit status.

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::server::App;

#[derive(Parser)]
#[command(name = "infercell", version, about = "Serverless WebAssembly inference platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage tenants (admin key).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Upload the function in DIR (reads DIR/function.toml) as a new version. Once the function
    /// has a release, the new version serves only when released (--release, --canary P, or
    /// `release set` later).
    Deploy {
        dir: PathBuf,
        /// Make the new version the stable version.
        #[arg(long, conflicts_with = "canary")]
        release: bool,
        /// Start the new version as a canary taking this percentage of the calls.
        #[arg(long, value_name = "PERCENT")]
        canary: Option<u32>,
        #[command(flatten)]
        steps: CanaryArgs,
        /// Release it (or start the canary) although its smoke tests fail.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Which version serves a function's bare name: releases, canaries, rollback, mirrors.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Named pointers to versions (`prod`, `beta`): call them as NAME@ALIAS.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// List, show or delete functions.
    #[command(subcommand)]
    Functions(FunctionsCommand),
    /// Push, list, show or delete models (ONNX).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Put, list or delete the tenant's files (read-only data functions are granted by name).
    #[command(subcommand)]
    Files(FilesCommand),
    /// The devices inference can run on: the CPU and every GPU adapter found.
    Devices {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put, list or delete the tenant's secrets (owner key; values are never shown).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Create, list or revoke the tenant's API keys (owner key), or platform keys (admin key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit log: management actions and denials (owner: own tenant; admin: any).
    Audit {
        /// Another tenant's log (admin key only).
        #[arg(long)]
        tenant: Option<String>,
        /// Only entries after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Call TENANT/FUNCTION[@N][/PATH] and print its response body.
    Invoke {
        /// TENANT/FUNCTION[@VERSION][/PATH...]
        target: String,
        /// Request body: literal text, @FILE, or - for stdin.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// HTTP method (default POST with --data, else GET).
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The bill for a period (default: this calendar month, UTC).
    Billing {
        /// Start (inclusive): 2026-11-01 or an RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: String,
        /// Another tenant's bill (admin key only).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Raw usage records, one per call (default: this calendar month).
    Usage {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Only this function.
        #[arg(long)]
        function: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Another tenant's records (admin key only).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// (Internal) Test-load a model from stdin under a memory limit; used by the server.
    #[command(hide = true)]
    NnProbe {
        #[arg(long)]
        engine: String,
        #[arg(long)]
        max_bytes: u64,
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// The last this many bytes of stdin are inputs to build the plan for.
        #[arg(long)]
        inputs_bytes: Option<usize>,
    },
    /// Show a component's imports and exports and whether this platform can run it (a .wasm
    /// file), or a deployed version's imports and the grants it needs and has (NAME[@N]).
    Inspect {
        /// A .wasm file, or NAME[@VERSION] of a deployed function.
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080", env = "INFERCELL_LISTEN")]
    listen: SocketAddr,
    /// Data directory (SQLite database, blobs, compiled artifacts, admin key).
    #[arg(long, default_value = "./data", env = "INFERCELL_DATA_DIR")]
    data_dir: PathBuf,
    /// Platform configuration file (default: DATA_DIR/infercell.toml if present).
    #[arg(long, env = "INFERCELL_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the server is and who we are.
#[derive(Args, Clone)]
pub struct ClientArgs {
    #[arg(long, env = "INFERCELL_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    #[arg(long, env = "INFERCELL_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum FilesCommand {
    /// Upload FILE as the tenant's file NAME (replacing it).
    Put {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the tenant's files.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete the tenant's file NAME.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal a value as the tenant's secret NAME (replacing it).
    Put {
        name: String,
        /// The value (it ends up in your shell history: prefer --file).
        #[arg(long)]
        value: Option<String>,
        /// Read the value from FILE.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the names of the tenant's secrets.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete the tenant's secret NAME.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key with ROLE (owner, deployer, invoker or billing; with the admin key: metrics,
    /// for a scraper of /metrics); prints it once.
    Create {
        role: String,
        /// A label to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the tenant's keys (never their secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke key ID: it is refused from this moment on.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its owner key (shown once).
    Create {
        name: String,
        #[arg(long, default_value = "free")]
        plan: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Upload FILE (ONNX) as a new version of model NAME.
    Push {
        name: String,
        file: PathBuf,
        /// auto (the best engine present), tract, onnxruntime or wgpu.
        #[arg(long, default_value = "auto")]
        engine: String,
        /// auto (a hardware GPU when present and granted, else the CPU), cpu or gpu.
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the tenant's models.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show where every node of FILE (ONNX) runs, on this machine, with its declared input
    /// shapes (dynamic dimensions taken as 1). Runs locally; no server needed.
    Check {
        file: PathBuf,
        /// gpu (the GPU engine; nodes without a kernel on the CPU), cpu, or auto (a hardware
        /// GPU when present).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a model's inputs, outputs and versions.
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a model (all versions).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What a model version's calls take and give, and its drift score against its baseline.
    Monitor {
        name: String,
        /// The version (default: the one serving the bare name now).
        #[arg(long)]
        version: Option<u32>,
        /// `now`: the calls seen so far become the reference window; later calls form the
        /// current window.
        #[arg(long, value_parser = ["now"])]
        baseline: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How a canary steps and is judged.
#[derive(Args, Clone, Default)]
pub struct CanaryArgs {
    /// Percentage added every healthy interval (must land on 100); none: hold until promoted.
    #[arg(long)]
    step: Option<u32>,
    /// How long each step lasts and health is judged over: 30s, 5m, ...
    #[arg(long)]
    interval: Option<String>,
    /// Error rate (5xx) over which the canary is rolled back (default 0.01).
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// p99 latency over which the canary is rolled back.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Calls the canary needs in an interval before it is judged (default 20).
    #[arg(long)]
    min_requests: Option<u64>,
}

/// What a release command is about.
#[derive(Args, Clone)]
pub struct ReleaseTarget {
    /// The function (or, with --model, the model).
    name: String,
    /// NAME is a model.
    #[arg(long)]
    model: bool,
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// The stable version, canary, mirror, aliases and history.
    Status {
        #[command(flatten)]
        target: ReleaseTarget,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make VERSION the stable version (every unpinned call).
    Set {
        #[command(flatten)]
        target: ReleaseTarget,
        version: u32,
        /// Although its smoke tests failed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a percentage of the calls to VERSION, stepping up while it is healthy and rolling
    /// it back at once when it is not.
    Canary {
        #[command(flatten)]
        target: ReleaseTarget,
        version: u32,
        #[arg(long)]
        percent: u32,
        #[command(flatten)]
        steps: CanaryArgs,
        /// Although its smoke tests failed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make the canary the stable version now.
    Promote {
        #[command(flatten)]
        target: ReleaseTarget,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the canary; without one, put the previous stable version back (or --to N).
    Rollback {
        #[command(flatten)]
        target: ReleaseTarget,
        #[arg(long)]
        to: Option<u32>,
        /// Roll back to --to N although its smoke tests failed.
        #[arg(long, requires = "to")]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy a percentage of the live calls to VERSION after each answer (shadow traffic), or
    /// stop it with --off.
    Mirror {
        #[command(flatten)]
        target: ReleaseTarget,
        #[arg(required_unless_present = "off")]
        version: Option<u32>,
        #[arg(long, conflicts_with = "off")]
        percent: Option<u32>,
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS at VERSION (made or moved).
    Set {
        #[command(flatten)]
        target: ReleaseTarget,
        alias: String,
        version: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The aliases and the versions they name.
    List {
        #[command(flatten)]
        target: ReleaseTarget,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove ALIAS.
    Rm {
        #[command(flatten)]
        target: ReleaseTarget,
        alias: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum FunctionsCommand {
    /// List the tenant's functions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show every version of a function.
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a function (all versions).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What changed between two versions: digest, size, imports, grants, limits, model pins,
    /// smoke tests.
    Diff {
        name: String,
        from: u32,
        to: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a function's recent log lines.
    Logs {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::NnProbe { engine, max_bytes, onnxruntime, inputs_bytes } => {
            return ExitCode::from(crate::nn::probe::run_child(&engine, max_bytes, onnxruntime, inputs_bytes) as u8);
        }
        Command::Model(ModelCommand::Check { file, device, json }) => model_check(&file, &device, json),
        other => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(client::run(other))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `infercell model check FILE [--device D] [--json]`.
fn model_check(file: &std::path::Path, device: &str, json: bool) -> anyhow::Result<()> {
    use crate::nn::gpu::{Wgpu, check};
    let onnx = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let gpu = match device {
        "cpu" => None,
        "gpu" | "auto" => match Wgpu::discover(u64::MAX) {
            Some(gpu) if device == "gpu" || gpu.is_hardware() => Some(gpu),
            None if device == "gpu" => anyhow::bail!("no GPU adapter on this machine (infercell devices lists them)"),
            _ => None,
        },
        other => anyhow::bail!("--device must be auto, cpu or gpu, not `{other}`"),
    };
    let checked = check(&onnx, gpu.as_ref()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&checked)?);
        return Ok(());
    }
    let placement = &checked.nodes;
    let width = placement.iter().map(|p| p.node.len()).max().unwrap_or(4).clamp(4, 48);
    println!("{:<width$}  {:<16}  {:<6}  why", "node", "op", "device");
    for p in placement {
        let node: String = p.node.chars().take(width).collect();
        println!("{node:<width$}  {:<16}  {:<6}  {}", p.op, p.device, p.why.as_deref().unwrap_or(""));
    }
    let on_gpu = placement.iter().filter(|p| p.device == "gpu").count();
    let name = gpu.as_ref().map_or("", |g| g.adapter_name());
    match gpu {
        Some(_) => println!("{} nodes: {on_gpu} on gpu ({name}), {} on cpu", placement.len(), placement.len() - on_gpu),
        None => println!("{} nodes: all on cpu", placement.len()),
    }
    if !checked.assumed_zero.is_empty() {
        println!(
            "note: this model takes {} as constants (shapes, axes); they were taken as zeros here, and \
             the nodes can differ for the values a caller sends",
            checked.assumed_zero.join(", ")
        );
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config_path = args.config.clone().or_else(|| {
        let p = args.data_dir.join("infercell.toml");
        p.exists().then_some(p)
    });
    let config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    let admin_env = std::env::var("INFERCELL_ADMIN_KEY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let telemetry = crate::telemetry::init(&config.telemetry, runtime.handle().clone())?;
    let served = runtime.block_on(async move {
        let (app, admin) = App::open(config, &args.data_dir, admin_env)?;
        match (&admin.path, admin.created) {
            (Some(path), true) => println!("admin key created: {} (mode 0600)", path.display()),
            (Some(path), false) => println!("admin key: {}", path.display()),
            (None, _) => println!("admin key: from INFERCELL_ADMIN_KEY"),
        }
        crate::server::serve(app, args.listen).await
    });
    // The runtime's threads still run: the last spans go out through them.
    telemetry.shutdown();
    served
}
