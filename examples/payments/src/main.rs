//! `payments`: the payments service of the orders example.
//!
//! `payments --listen 127.0.0.1:18091 --token-file contracts/payments.token`

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use payments::Payments;

/// Serve the payments API.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18091")]
    listen: SocketAddr,
    /// File holding the bearer token callers must send.
    #[arg(long)]
    token_file: PathBuf,
    /// Answer the first N charges with 503, as a provider in an outage would.
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read {}", args.token_file.display()))?;
    let payments = Payments::new(token.trim_end());
    payments.fail_next(args.fail_first);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("payments listening on http://{}", listener.local_addr()?);
    axum::serve(listener, payments.router()).await?;
    Ok(())
}
