//! `opshost`: serve operation handlers shipped as wasm components over HTTP, drive operations
//! as a caller, mint development tokens and generate facades.

mod progress;
mod remote;
mod scaffold;
mod serve;

/// mimalloc: the host allocates and frees per operation from many threads at once, where it
/// is markedly faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use opshost_server::auth::{TokenRequest, mint_hs256};

use crate::remote::Remote;
use opshost_host::HostConfig;

/// Exit codes a shell script can rely on.
pub mod exit {
    /// The operation (or the command) succeeded.
    pub const OK: u8 = 0;
    /// The operation ended failed or cancelled, or is not terminal after `wait --timeout`.
    pub const NOT_COMPLETED: u8 = 1;
    /// Bad usage, a bad file or a local error.
    pub const USAGE: u8 = 2;
    /// The host answered with an error (its code is printed).
    pub const REFUSED: u8 = 3;
    /// The host could not be reached.
    pub const UNREACHABLE: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "opshost",
    version,
    about = "Host for long-running operations with wasm handlers",
    after_help = "Exit codes: 0 ok; 1 the operation ended failed or cancelled (or is still running after `wait --timeout`); 2 usage or local error; 3 the host refused (error code printed); 4 the host is unreachable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the host is and who is calling.
#[derive(Args, Clone)]
struct Connection {
    /// Base URL of the host.
    #[arg(long, env = "OPSHOST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token (see `opshost token`).
    #[arg(long, env = "OPSHOST_TOKEN", hide_env_values = true)]
    token: String,
    /// A PEM file of certificate authorities to trust besides the system's, for an `https://`
    /// host whose certificate a private CA signed.
    #[arg(long, env = "OPSHOST_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a deployment over HTTP (loopback unless the config says otherwise), keeping
    /// operations in the SQLite store and resuming what a previous run left unfinished.
    Serve {
        /// The host config (TOML): deployment, `[server]` and `[auth]`.
        #[arg(short, long)]
        config: PathBuf,
        /// Listen address, overriding `[server] listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The SQLite store's directory, overriding `[store] data_dir` (default `./data`).
        #[arg(long, conflicts_with = "memory")]
        data_dir: Option<PathBuf>,
        /// Keep operations and jobs in PostgreSQL (`postgres://user@host:port/database`),
        /// overriding `[store] url`.
        #[arg(long, conflicts_with_all = ["memory", "data_dir"])]
        store: Option<String>,
        /// Keep operations in memory only (lost when the host stops).
        #[arg(long)]
        memory: bool,
        /// How the host writes its own logs to stderr: `text`, or `json` (one object a line,
        /// with the fields of the run or job each line is about).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Start an operation and print its snapshot (or watch it with `--watch`).
    Start {
        #[command(flatten)]
        connection: Connection,
        /// The operation, e.g. `Orders.Process`.
        operation: String,
        /// The input: JSON text, or `@path` to read it from a file.
        #[arg(short, long)]
        input: String,
        /// Idempotency key, scoped to the caller's tenant: the operation id is the key itself in
        /// the default tenant and `key@tenant` in any other.
        #[arg(long)]
        id: Option<String>,
        /// Ask the host to answer with the result if it is ready within this many seconds.
        #[arg(long)]
        wait: Option<u64>,
        /// Then show live progress until the operation ends, and print its result.
        #[arg(long)]
        watch: bool,
    },
    /// Print an operation's current snapshot.
    Get {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
    },
    /// Print an operation's log lines (what its handler and job workers wrote, and the
    /// outbound requests they made), or follow them until the operation ends.
    Logs {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
        /// Keep printing lines as they are written, until the operation has ended.
        #[arg(long, short)]
        follow: bool,
        /// Print each line as JSON, with its trace and span ids.
        #[arg(long)]
        json: bool,
    },
    /// Wait for an operation to end and print its snapshot.
    Wait {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
        /// Give up after this many seconds (exit 1 if still running).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show an operation's live progress, then print its result.
    Watch {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
    },
    /// Cancel an operation and print its terminal snapshot.
    Cancel {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
    },
    /// Send a named signal to an operation.
    Signal {
        #[command(flatten)]
        connection: Connection,
        /// Operation id.
        id: String,
        /// Signal name, e.g. `Expedite`.
        name: String,
        /// The payload: JSON text, or `@path`.
        #[arg(short, long, default_value = "{}")]
        input: String,
    },
    /// List the operations you may observe.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Only this state (pending, running, completed, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Start after this id (a previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Operate the service's jobs (needs the host's admin capability, `opshost.admin` by
    /// default): `opshost jobs --url U --token T list|get|retry|cancel`.
    Jobs {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Deploy a new version of an operation's handler or a queue's worker to a running host,
    /// without a restart (needs the host's admin capability). The host checks it as `check`
    /// does and refuses it, changing nothing, when any problem is found. Operations already
    /// accepted keep the version they started on.
    Deploy {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        target: TargetArgs,
        /// The component file (`.wasm`).
        component: PathBuf,
        /// Give the new version only this share of new work (1 to 100), as a ramp; deploy
        /// again without it to make it current for all.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: Option<u8>,
        /// Only check: print every problem the host finds and how the component's imports
        /// differ from the current version's, changing nothing; exits 1 on any problem.
        #[arg(long, conflicts_with = "percent")]
        dry_run: bool,
    },
    /// Roll back an operation's handler or a queue's worker: a ramp ends, or else the
    /// previous version is made current again (needs the host's admin capability).
    Rollback {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the versions of every handler and worker, with their state and who deployed
    /// them, and the last changes (needs the host's admin capability).
    Deployments {
        #[command(flatten)]
        connection: Connection,
        /// Print the last changes of the deployment log instead: when, what, which version,
        /// and who made each.
        #[arg(long)]
        history: bool,
    },
    /// Mint an HS256 development token.
    Token {
        /// Subject (`sub`).
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Tenant claim.
        #[arg(long)]
        tenant: Option<String>,
        /// A capability for `scope`; repeat for more.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Environment variable that holds the HS256 secret.
        #[arg(long, default_value = "OPSHOST_JWT_SECRET")]
        secret_env: String,
    },
    /// Check a component against a deployment before deploying it: the WIT world it exports,
    /// the operation or queue it serves, its imports against its grants, its sha256 pin. Prints
    /// every problem; exits 1 if there is any.
    Check {
        /// The component file (`.wasm`).
        component: PathBuf,
        /// The host or deployment config (TOML) that names it.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Scaffold a guest crate for one operation: the handler on the guest SDK, the facade of
    /// the contract, a harness test and a deployment config. `cargo test` in it builds the
    /// component and runs the test.
    New {
        /// The crate's name, e.g. `orders-process`.
        name: String,
        /// The operation it handles, e.g. `Orders.Process`.
        #[arg(long)]
        operation: String,
        /// The contract manifest (default: the only `*.manifest.json` in the current directory).
        #[arg(long)]
        contract: Option<PathBuf>,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".")]
        into: PathBuf,
        /// The opshost checkout whose SDK, harness and codegen the crate uses (default: the
        /// one this command was built from).
        #[arg(long)]
        opshost: Option<PathBuf>,
    },
    /// Generate the Rust participant facade of a contract manifest.
    Codegen {
        /// The contract manifest (JSON).
        manifest: PathBuf,
        /// Where to write the Rust source.
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// What a deploy or a rollback changes: one operation's handler or one queue's worker.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// The operation whose handler it is, e.g. `Orders.Process`.
    #[arg(long)]
    operation: Option<String>,
    /// The queue whose worker it is, e.g. `fulfillment`.
    #[arg(long)]
    queue: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Result<opshost_api::DeployTarget> {
        match (&self.operation, &self.queue) {
            (Some(operation), _) => Ok(opshost_api::DeployTarget::Operation(operation.clone())),
            (None, Some(queue)) => Ok(opshost_api::DeployTarget::Queue(queue.clone())),
            (None, None) => anyhow::bail!("name the target with --operation or --queue"),
        }
    }
}

/// `opshost jobs ...`.
#[derive(Subcommand)]
enum JobsAction {
    /// List jobs, tab-separated: id, queue, state, attempt/max, owned operation.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state (queued, running, completed, dead, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Start after this id (a previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print one job.
    Get {
        /// Job id.
        id: String,
    },
    /// Queue a dead or cancelled job again with fresh attempts.
    Retry {
        /// Job id.
        id: String,
    },
    /// Cancel a job (a running one is asked to stop).
    Cancel {
        /// Job id.
        id: String,
    },
}

/// How the host writes its own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Every TLS client and server of the process uses ring (installing it again changes
    // nothing).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match &cli.command {
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        } => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        _ => logs.init(),
    }
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(remote::exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            store,
            memory,
            log_format: _,
        } => serve::serve(&config, listen, data_dir, store, memory).await,
        Command::Token {
            sub,
            tenant,
            scopes,
            ttl,
            secret_env,
        } => {
            let secret = std::env::var(&secret_env)
                .with_context(|| format!("environment variable `{secret_env}` is not set"))?;
            let token = mint_hs256(
                secret.as_bytes(),
                &TokenRequest {
                    subject: sub,
                    tenant,
                    scopes,
                    ttl: Duration::from_secs(ttl),
                },
            )?;
            println!("{token}");
            Ok(exit::OK)
        }
        Command::Check { component, config } => {
            let config = HostConfig::from_path(&config)?;
            let problems = opshost_sandbox::check_component(&config.deployment, &component)?;
            for problem in &problems {
                println!("problem: {problem}");
            }
            if problems.is_empty() {
                println!("ok: {} would load", component.display());
                Ok(exit::OK)
            } else {
                println!("{} problem(s) in {}", problems.len(), component.display());
                Ok(exit::NOT_COMPLETED)
            }
        }
        Command::New {
            name,
            operation,
            contract,
            into,
            opshost,
        } => {
            let contract = match contract {
                Some(contract) => contract,
                None => scaffold::find_contract(Path::new("."))?,
            };
            let opshost = opshost
                .or_else(scaffold::default_opshost)
                .context("cannot find an opshost checkout; pass --opshost <path>")?;
            let done = scaffold::scaffold(&scaffold::NewGuest {
                name,
                operation,
                contract,
                into,
                opshost,
            })?;
            for kind in &done.unfilled {
                eprintln!(
                    "warning: no placeholder {kind} could be made from its schema; \
                     fill in the `null` in src/lib.rs and tests/handler.rs"
                );
            }
            println!("created {}", done.dir.display());
            println!("next: cd {} && cargo test", done.dir.display());
            Ok(exit::OK)
        }
        Command::Codegen { manifest, out } => {
            opshost_codegen::generate_file(&manifest, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(exit::OK)
        }
        Command::Start {
            connection,
            operation,
            input,
            id,
            wait,
            watch,
        } => {
            let remote = Remote::new(&connection)?;
            remote
                .start(&operation, &read_json(&input)?, id, wait, watch)
                .await
        }
        Command::Get { connection, id } => Remote::new(&connection)?.get(&id).await,
        Command::Logs {
            connection,
            id,
            follow,
            json,
        } => Remote::new(&connection)?.logs(&id, follow, json).await,
        Command::Wait {
            connection,
            id,
            timeout,
        } => Remote::new(&connection)?.wait(&id, timeout).await,
        Command::Watch { connection, id } => Remote::new(&connection)?.watch(&id).await,
        Command::Cancel { connection, id } => Remote::new(&connection)?.cancel(&id).await,
        Command::Signal {
            connection,
            id,
            name,
            input,
        } => {
            Remote::new(&connection)?
                .signal(&id, &name, &read_json(&input)?)
                .await
        }
        Command::List {
            connection,
            operation,
            state,
            after,
            limit,
        } => {
            Remote::new(&connection)?
                .list(operation, state, after, limit)
                .await
        }
        Command::Deploy {
            connection,
            target,
            component,
            percent,
            dry_run,
        } => {
            let bytes = std::fs::read(&component)
                .with_context(|| format!("cannot read {}", component.display()))?;
            let remote = Remote::new(&connection)?;
            if dry_run {
                remote.check_deploy(&target.target()?, bytes).await
            } else {
                remote.deploy(&target.target()?, bytes, percent).await
            }
        }
        Command::Rollback { connection, target } => {
            Remote::new(&connection)?.rollback(&target.target()?).await
        }
        Command::Deployments {
            connection,
            history,
        } => Remote::new(&connection)?.deployments(history).await,
        Command::Jobs { connection, action } => {
            let remote = Remote::new(&connection)?;
            match action {
                JobsAction::List {
                    queue,
                    state,
                    after,
                    limit,
                } => remote.jobs(queue, state, after, limit).await,
                JobsAction::Get { id } => remote.job(&id).await,
                JobsAction::Retry { id } => remote.retry_job(&id).await,
                JobsAction::Cancel { id } => remote.cancel_job(&id).await,
            }
        }
    }
}

/// JSON text, or `@path` to read it from a file.
fn read_json(input: &str) -> Result<serde_json::Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {path}"))?,
        None => input.to_owned(),
    };
    serde_json::from_str(&text).context("the input is not valid JSON")
}
