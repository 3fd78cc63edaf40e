//! The `kraken` command: runs an agent (`kraken up`) and talks to a running platform.
//!
//! Thin by design: parse arguments, set up logging, call the library.

mod up;

use clap::{Parser, Subcommand};

/// Kraken turns the spare machines on a LAN into one small app platform.
#[derive(Debug, Parser)]
#[command(name = "kraken", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a single-node platform on this machine (orchestrator + worker in one process).
    ///
    /// Examples:
    ///   kraken up
    ///   kraken up --deploy https://example.com/me/app.git --branch main
    ///   kraken up --runtime process --data-dir /var/lib/kraken
    #[command(verbatim_doc_comment)]
    Up(up::UpArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kraken: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kraken: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
