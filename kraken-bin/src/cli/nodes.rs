//! `kraken nodes` and its subcommands: list the nodes, drain one.

use super::client::Client;
use super::{CliError, print_json, show};
use clap::{Args, Subcommand};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// Arguments of `kraken nodes`: without a subcommand, the list.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// What to do (default: list the nodes).
    #[command(subcommand)]
    pub command: Option<NodesCommand>,
}

/// The subcommands of `kraken nodes`.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Move a node's apps to the other nodes, then remove the node from the platform.
    ///
    /// The node gets no new work; each of its deployments is started again on another
    /// node (a new generation) and its old instance stopped. Deployments stay where they
    /// are while no other node can take them. Once it runs nothing, the node is removed;
    /// restart its agent to join again.
    ///
    /// Examples:
    ///   kraken nodes drain node-0123abcd
    ///   kraken nodes drain node-0123abcd --wait --timeout 600
    #[command(verbatim_doc_comment)]
    Drain(DrainArgs),
}

/// Arguments of `kraken nodes drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node (see `kraken nodes`).
    #[arg(value_name = "NODE_ID")]
    pub id: String,
    /// Wait until the node is removed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds (the drain goes on).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

/// `kraken nodes [drain ...]`.
pub async fn nodes(client: &Client, args: NodesArgs, json: bool) -> Result<(), CliError> {
    match args.command {
        None => show::nodes(client, json).await,
        Some(NodesCommand::Drain(args)) => drain(client, args, json).await,
    }
}

async fn drain(client: &Client, args: DrainArgs, json: bool) -> Result<(), CliError> {
    client
        .graphql(
            "mutation($id: String!) { drainNode(nodeId: $id) }",
            json!({ "id": args.id }),
        )
        .await?;
    if !args.wait {
        if json {
            print_json(&json!({ "node": args.id, "draining": true }));
        } else {
            println!(
                "kraken: draining {}; `kraken nodes` shows it until it is removed",
                args.id
            );
        }
        return Ok(());
    }
    let limit = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let mut shown: Option<usize> = None;
    loop {
        let Some(left) = placed_on(client, &args.id).await? else {
            break;
        };
        if !json && shown != Some(left) {
            println!("kraken: draining {}: {left} deployment(s) on it", args.id);
            shown = Some(left);
        }
        if started.elapsed() > limit {
            return Err(CliError::Failed(format!(
                "gave up waiting after {}s; node {} still holds {left} deployment(s) and goes on draining (see `kraken nodes`)",
                limit.as_secs(),
                args.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if json {
        print_json(&json!({ "node": args.id, "removed": true }));
    } else {
        println!("kraken: {} drained and removed", args.id);
    }
    Ok(())
}

/// How many deployments are placed on the node; `None` once it is gone.
async fn placed_on(client: &Client, id: &str) -> Result<Option<usize>, CliError> {
    let data = client
        .graphql("{ getNodes { id deployments } }", json!({}))
        .await?;
    Ok(data["getNodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"].as_str() == Some(id)))
        .map(|n| n["deployments"].as_array().map_or(0, Vec::len)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        nodes: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Nodes(NodesArgs),
    }

    #[test]
    fn nodes_lists_and_nodes_drain_drains() {
        let Top::Nodes(args) = Cli::try_parse_from(["kraken", "nodes"]).unwrap().nodes;
        assert!(args.command.is_none());
        let Top::Nodes(args) =
            Cli::try_parse_from(["kraken", "nodes", "drain", "node-a", "--wait"])
                .unwrap()
                .nodes;
        match args.command {
            Some(NodesCommand::Drain(d)) => {
                assert_eq!(d.id, "node-a");
                assert!(d.wait);
                assert_eq!(d.timeout, 600);
            }
            None => panic!("no subcommand"),
        }
        assert!(Cli::try_parse_from(["kraken", "nodes", "drain"]).is_err());
    }
}
