//! `opshost`: run operation handlers shipped as wasm components, and generate facades.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use opshost_api::{OperationEvent, OperationState, Snapshot};
use opshost_sandbox::{DeploymentConfig, WasmHost};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "opshost",
    version,
    about = "Host for long-running operations with wasm handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the Rust participant facade of a contract manifest.
    Codegen {
        /// The contract manifest (JSON).
        manifest: PathBuf,
        /// Where to write the Rust source.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Serve a deployment in-process, start one operation and show its live progress.
    Run {
        /// The operation to start, e.g. `Orders.Process`.
        operation: String,
        /// The deployment config (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// The start input: JSON text, or `@path` to read it from a file.
        #[arg(short, long)]
        input: String,
        /// Operation id (idempotency key); a fresh ULID when omitted.
        #[arg(long)]
        id: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Codegen { manifest, out } => {
            opshost_codegen::generate_file(&manifest, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            operation,
            config,
            input,
            id,
        } => {
            let input = read_input(&input)?;
            let config = DeploymentConfig::from_path(&config)?;
            let host = WasmHost::from_config(&config)?;
            let accepted = host.start(&operation, id, input).await?;
            eprintln!("started {} as {}", accepted.operation, accepted.id);
            let terminal = watch(&host, &accepted.id).await?;
            report(&terminal)
        }
    }
}

fn read_input(input: &str) -> Result<Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {path}"))?,
        None => input.to_owned(),
    };
    serde_json::from_str(&text).context("the input is not valid JSON")
}

async fn watch(host: &WasmHost, id: &str) -> Result<Snapshot> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let mut events = host.runtime().watch(id, None);
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event?;
        if let OperationEvent::Progress { snapshot } = &event
            && let Some(progress) = &snapshot.progress
        {
            show_progress(&bar, progress);
        }
        last = Some(event.snapshot().clone());
    }
    bar.finish_and_clear();
    match last {
        Some(snapshot) if snapshot.is_terminal() => Ok(snapshot),
        _ => bail!("the event stream ended before the operation was terminal"),
    }
}

fn show_progress(bar: &ProgressBar, progress: &Value) {
    if let (Some(done), Some(total)) = (progress["completed"].as_u64(), progress["total"].as_u64())
    {
        bar.set_length(total);
        bar.set_position(done);
    }
    let step = progress["step"].as_str().unwrap_or_default();
    let message = progress["message"].as_str().unwrap_or_default();
    bar.suspend(|| eprintln!("  {step:<10} {message}"));
    bar.set_message(message.to_owned());
}

fn report(terminal: &Snapshot) -> Result<ExitCode> {
    match terminal.state {
        OperationState::Completed => {
            println!("{}", serde_json::to_string_pretty(&terminal.output)?);
            Ok(ExitCode::SUCCESS)
        }
        state => {
            let error = terminal.error.as_ref();
            eprintln!(
                "operation {} ended {}: {} {}",
                terminal.id,
                state.as_str(),
                error.map(|e| e.code.as_str()).unwrap_or_default(),
                error.map(|e| e.message.as_str()).unwrap_or_default()
            );
            Ok(ExitCode::from(1))
        }
    }
}
