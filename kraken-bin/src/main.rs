//! The `kraken` command: runs an agent (`kraken up`) and talks to a running platform
//! (`kraken deploy`, `ls`, `nodes`, `logs`, `redeploy`, `rm`, `status`).
//!
//! Thin by design: parse arguments, set up logging, call the library or the API.

mod agent;
mod broker;
mod cli;
mod node;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Examples:
  kraken up                                   start a platform on this machine; prints the
                                              API address and token and saves them for the CLI
  kraken deploy https://example.com/me/app.git --branch main --wait
  kraken ls
  kraken logs dep-0123abcd -f
  kraken redeploy dep-0123abcd --wait
  kraken rm dep-0123abcd
  kraken --orchestrator 192.168.1.10:8000 --token \"$TOKEN\" status
  kraken ls --json | jq -r '.[].id'

Exit codes:
  0  success
  1  the operation failed (refused, unknown id, wrong token, the deployment failed)
  2  usage error (bad arguments, no orchestrator address known)
  3  the orchestrator cannot be reached";

/// Kraken turns the spare machines on a LAN into one small app platform.
#[derive(Debug, Parser)]
#[command(name = "kraken", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
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
    ///   kraken up --runtime process --data-dir /var/lib/kraken --api-addr 127.0.0.1:8000
    #[command(verbatim_doc_comment)]
    Up(up::UpArgs),
    /// Join a platform as a worker.
    ///
    /// Examples:
    ///   kraken agent --amqp amqp://kraken:secret@192.168.1.10:5672/%2f
    ///   kraken agent --amqp amqp://127.0.0.1:5672/%2f --data-dir /tmp/worker-2
    #[command(verbatim_doc_comment)]
    Agent(agent::AgentArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Logs go to stderr, so that output meant for people and scripts stays alone on stdout.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kraken: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent commands log what they do; the client commands only problems.
    init_logging(if matches!(cli.command, Command::Client(_)) {
        "warn"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kraken: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Up(args) => exit(up::run(args, cli.global.token).await),
            Command::Agent(args) => exit(agent::run(args).await),
            Command::Client(command) => cli::run(command, cli.global).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// docs/cli.md lists every flag of `kraken up` and `kraken agent`, so the two cannot
    /// drift apart (they did: the docs named a `--node-timeout` that never existed).
    #[test]
    fn the_cli_docs_list_every_flag_of_up_and_agent() {
        let docs = include_str!("../../docs/cli.md");
        let command = Cli::command();
        for name in ["up", "agent"] {
            let heading = format!("## `kraken {name}`");
            let start = docs
                .find(&heading)
                .unwrap_or_else(|| panic!("docs/cli.md has no section {heading}"));
            let section = &docs[start + heading.len()..];
            let section = &section[..section.find("\n## ").unwrap_or(section.len())];
            let sub = command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long().filter(|l| *l != "help") else {
                    continue;
                };
                if matches!(long, "orchestrator" | "token" | "json") && name == "up" {
                    // The client options, named once for the whole section.
                    assert!(section.contains(&format!("`--{long}`")), "--{long}");
                    continue;
                }
                assert!(
                    section.contains(&format!("`--{long} "))
                        || section.contains(&format!("`--{long}`")),
                    "docs/cli.md, section {heading}, does not list --{long}"
                );
            }
        }
    }
}
