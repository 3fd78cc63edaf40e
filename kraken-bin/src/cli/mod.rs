//! The client commands: `deploy`, `ls`, `nodes` (and `nodes drain`), `logs`, `redeploy`,
//! `rm`, `status`. They
//! talk to an orchestrator's HTTP API (GraphQL for everything but log streams).

mod client;
pub mod config;
mod deploy;
mod nodes;
mod show;
mod table;

use clap::{Args, Subcommand};
use client::Client;
use std::fmt;
use std::process::ExitCode;

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The orchestrator's API address, host:port [default: the one `kraken up` saved]
    #[arg(long, global = true, env = "KRAKEN_ORCHESTRATOR", value_name = "ADDR")]
    pub orchestrator: Option<String>,
    /// The API token, needed to change anything [default: the one `kraken up` saved]
    #[arg(
        long,
        global = true,
        env = "KRAKEN_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print JSON for scripts instead of tables and progress
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Deploy a branch of a git repository whose root holds a shipwreck.toml.
    ///
    /// Examples:
    ///   kraken deploy https://github.com/me/app.git
    ///   kraken deploy file:///srv/git/app.git --branch dev --wait
    #[command(verbatim_doc_comment)]
    Deploy(deploy::DeployArgs),
    /// List deployments.
    ///
    /// Examples:
    ///   kraken ls
    ///   kraken ls --all --json
    #[command(verbatim_doc_comment)]
    Ls(show::LsArgs),
    /// List the nodes of the platform, or drain one.
    ///
    /// Examples:
    ///   kraken nodes
    ///   kraken nodes drain node-0123abcd --wait
    #[command(verbatim_doc_comment)]
    Nodes(nodes::NodesArgs),
    /// Show a deployment's log (build output, app output, Kraken's notes).
    ///
    /// Examples:
    ///   kraken logs dep-0123abcd --tail 50
    ///   kraken logs dep-0123abcd -f
    #[command(verbatim_doc_comment)]
    Logs(show::LogsArgs),
    /// Deploy the newest commit of a deployment's branch (nothing happens if it did not move,
    /// unless the deployment failed).
    Redeploy(deploy::RedeployArgs),
    /// Destroy a deployment: stop the app and free its port.
    Rm(deploy::RmArgs),
    /// Show who leads the platform, its nodes and deployments at a glance.
    Status,
}

/// Why a client command failed; decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// The orchestrator answered but the operation failed (exit 1).
    Failed(String),
    /// The command line or the configuration is wrong (exit 2).
    Usage(String),
    /// The orchestrator cannot be reached (exit 3).
    Unreachable(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Failed(m) | CliError::Usage(m) | CliError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

/// Runs a client command; prints errors and returns the exit code.
pub async fn run(command: ClientCommand, global: GlobalArgs) -> ExitCode {
    match execute(command, global).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kraken: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn execute(command: ClientCommand, global: GlobalArgs) -> Result<(), CliError> {
    let saved = config::load().map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let Some(addr) = global.orchestrator.clone().or(saved.orchestrator) else {
        return Err(CliError::Usage(
            "no orchestrator address: pass --orchestrator HOST:PORT, set KRAKEN_ORCHESTRATOR, or run `kraken up` on this machine first"
                .into(),
        ));
    };
    let client = Client::new(&addr, global.token.clone().or(saved.token))?;
    let json = global.json;
    match command {
        ClientCommand::Deploy(args) => deploy::deploy(&client, args, json).await,
        ClientCommand::Redeploy(args) => deploy::redeploy(&client, args, json).await,
        ClientCommand::Rm(args) => deploy::rm(&client, args, json).await,
        ClientCommand::Ls(args) => show::ls(&client, args, json).await,
        ClientCommand::Nodes(args) => nodes::nodes(&client, args, json).await,
        ClientCommand::Logs(args) => show::logs(&client, args, json).await,
        ClientCommand::Status => show::status(&client, json).await,
    }
}

/// Prints a JSON value for scripts.
fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
