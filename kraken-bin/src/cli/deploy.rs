//! Commands that change deployments: `deploy`, `redeploy`, `rm`, and waiting for the result.

use super::client::Client;
use super::{CliError, print_json};
use clap::Args;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// Arguments of `kraken deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The git repository (https://, ssh://, git://, file://, user@host:path or a path).
    #[arg(value_name = "GIT_URL")]
    pub url: String,
    /// The branch to deploy.
    #[arg(long, short, default_value = "main")]
    pub branch: String,
    /// Follow the statuses and the build log until the app runs (exit 0, printing its URL)
    /// or fails (exit 1, printing why).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds (the deployment goes on).
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Arguments of `kraken redeploy`.
#[derive(Debug, Args)]
pub struct RedeployArgs {
    /// The deployment.
    #[arg(value_name = "DEPLOYMENT_ID")]
    pub id: String,
    /// Wait until it runs again (or fails).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Arguments of `kraken rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The deployment.
    #[arg(value_name = "DEPLOYMENT_ID")]
    pub id: String,
    /// Wait until it is gone.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
}

const DEPLOYMENT_FIELDS: &str = "id appName srcUrl gitBranch commit status errorReason generation node port resultsUrl \
                                 statusHistory { status time timeMs reason }";

async fn fetch(client: &Client, id: &str) -> Result<Value, CliError> {
    let query = format!(
        "query($id: String!) {{ getDeployment(deploymentId: $id) {{ {DEPLOYMENT_FIELDS} }} }}"
    );
    let data = client.graphql(&query, json!({ "id": id })).await?;
    Ok(data["getDeployment"].clone())
}

/// `kraken deploy`.
pub async fn deploy(client: &Client, args: DeployArgs, json: bool) -> Result<(), CliError> {
    let data = client
        .graphql(
            "mutation($url: String!, $branch: String!) { createDeployment(deploymentUrl: $url, gitBranch: $branch) }",
            json!({ "url": args.url, "branch": args.branch }),
        )
        .await?;
    let id = data["createDeployment"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !args.wait {
        if json {
            print_json(&json!({ "id": id }));
        } else {
            println!("{id}");
            eprintln!(
                "kraken: deploying {} ({}); follow it with `kraken logs {id} -f`",
                args.url, args.branch
            );
        }
        return Ok(());
    }
    if !json {
        println!("kraken: deploying {} ({}) as {id}", args.url, args.branch);
    }
    let deployment = wait(
        client,
        &id,
        None,
        Goal::Running,
        Duration::from_secs(args.timeout),
        !json,
        None,
    )
    .await?;
    finish_running(&deployment, json);
    Ok(())
}

/// `kraken redeploy`.
pub async fn redeploy(client: &Client, args: RedeployArgs, json: bool) -> Result<(), CliError> {
    let before = fetch(client, &args.id).await?;
    let data = client
        .graphql(
            "mutation($id: String!) { pollRedeploy(deploymentId: $id) }",
            json!({ "id": args.id }),
        )
        .await?;
    let asked = data["pollRedeploy"].as_bool().unwrap_or(false);
    if !args.wait {
        if json {
            print_json(&json!({ "id": args.id, "requested": asked }));
        } else if asked {
            println!("kraken: redeploy of {} requested", args.id);
        } else {
            println!("kraken: a redeploy of {} is already pending", args.id);
        }
        return Ok(());
    }
    let last = last_entry(&before);
    let deployment = wait(
        client,
        &args.id,
        last,
        Goal::Running,
        Duration::from_secs(args.timeout),
        !json,
        Some(0),
    )
    .await?;
    finish_running(&deployment, json);
    Ok(())
}

/// `kraken rm`.
pub async fn rm(client: &Client, args: RmArgs, json: bool) -> Result<(), CliError> {
    let before = fetch(client, &args.id).await?;
    let data = client
        .graphql(
            "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
            json!({ "id": args.id }),
        )
        .await?;
    let asked = data["cancelDeployment"].as_bool().unwrap_or(false);
    if !json && !asked {
        println!("kraken: {} is already being destroyed", args.id);
    }
    if !args.wait {
        if json {
            print_json(&json!({ "id": args.id, "requested": asked }));
        } else if asked {
            println!("kraken: destroying {}", args.id);
        }
        return Ok(());
    }
    let deployment = if before["status"] == "Destroyed" {
        before
    } else {
        let after = last_entry(&before);
        wait(
            client,
            &args.id,
            after,
            Goal::Destroyed,
            Duration::from_secs(args.timeout),
            !json,
            None,
        )
        .await?
    };
    if json {
        print_json(&deployment);
    } else {
        println!("kraken: {} destroyed", args.id);
    }
    Ok(())
}

fn finish_running(deployment: &Value, json: bool) {
    if json {
        print_json(deployment);
        return;
    }
    let id = deployment["id"].as_str().unwrap_or_default();
    match deployment["resultsUrl"].as_str() {
        Some(url) => println!("kraken: {id} is running at {url}"),
        None => println!("kraken: {id} is running"),
    }
}

/// What a wait ends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// `Running` (success) or `Errored` (failure).
    Running,
    /// `Destroyed`.
    Destroyed,
}

/// A history entry, to find where to pick up: (time in ms, status).
type Entry = (u64, String);

fn entries(deployment: &Value) -> Vec<(Entry, Option<String>)> {
    deployment["statusHistory"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    let entry = (
                        e["timeMs"].as_u64().unwrap_or(0),
                        e["status"].as_str().unwrap_or_default().to_owned(),
                    );
                    (entry, e["reason"].as_str().map(str::to_owned))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn last_entry(deployment: &Value) -> Option<Entry> {
    entries(deployment).pop().map(|(entry, _)| entry)
}

/// Polls the deployment until it reaches `goal` after the history entry `after` (from the
/// start when `None`), printing each new status (and, with `log_tail`, the log as it comes)
/// when `show`. Returns the deployment as last read.
async fn wait(
    client: &Client,
    id: &str,
    after: Option<Entry>,
    goal: Goal,
    limit: Duration,
    show: bool,
    log_tail: Option<usize>,
) -> Result<Value, CliError> {
    let logs = (show && goal == Goal::Running)
        .then(|| tokio::spawn(print_log(client.clone(), id.to_owned(), log_tail)));
    let result = poll(client, id, after, goal, limit, show).await;
    if let Some(task) = logs {
        // Let the last lines of the log arrive before stopping.
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
    }
    result
}

async fn poll(
    client: &Client,
    id: &str,
    after: Option<Entry>,
    goal: Goal,
    limit: Duration,
    show: bool,
) -> Result<Value, CliError> {
    let started = Instant::now();
    let mut printed = after.clone();
    loop {
        let d = fetch(client, id).await?;
        let history = entries(&d);
        let start = printed
            .as_ref()
            .and_then(|p| history.iter().position(|(e, _)| e == p))
            .map_or(0, |i| i + 1);
        // The history is bounded; if the entry we stopped at fell out of it, go on from the end.
        let start = if printed.is_some() && start == 0 {
            history.len().saturating_sub(1)
        } else {
            start
        };
        let new = &history[start.min(history.len())..];
        if show {
            for ((_, status), reason) in new {
                match reason {
                    Some(reason) => println!("==> {status}: {reason}"),
                    None => println!("==> {status}"),
                }
            }
        }
        let moved = after.is_none() || history.last().map(|(e, _)| e) != after.as_ref();
        if let Some((entry, _)) = history.last() {
            printed = Some(entry.clone());
        }
        let status = d["status"].as_str().unwrap_or_default();
        if moved {
            match (goal, status) {
                (Goal::Running, "Running") | (Goal::Destroyed, "Destroyed") => return Ok(d),
                (Goal::Running, "Errored") => {
                    let reason = d["errorReason"].as_str().unwrap_or("no reason given");
                    return Err(CliError::Failed(format!(
                        "deployment {id} failed: {reason}"
                    )));
                }
                (
                    Goal::Running,
                    "DestructionRequested"
                    | "DelegatingDestruction"
                    | "DestructionInProgress"
                    | "Destroyed",
                ) => {
                    return Err(CliError::Failed(format!(
                        "deployment {id} is being destroyed"
                    )));
                }
                _ => {}
            }
        }
        if started.elapsed() > limit {
            return Err(CliError::Failed(format!(
                "gave up waiting after {}s; deployment {id} is {status} and goes on (see `kraken ls`)",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints a deployment's log as it comes, without the timestamps.
async fn print_log(client: Client, id: String, tail: Option<usize>) {
    let path = match tail {
        Some(n) => format!("/log/{id}?follow=true&tail={n}"),
        None => format!("/log/{id}?follow=true"),
    };
    let Ok(mut response) = client.stream(&path).await else {
        return;
    };
    let mut pending = String::new();
    while let Ok(Some(chunk)) = client.chunk(&mut response).await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end_matches('\n');
            // `<time> [<stream>] <text>` → `  [<stream>] <text>`
            let shown = line.split_once(' ').map_or(line, |(_, rest)| rest);
            println!("    {shown}");
        }
    }
}
