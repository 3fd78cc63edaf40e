//! Commands that read: `ls`, `nodes`, `logs`, `status`.

use super::client::Client;
use super::table::{or_dash, render};
use super::{CliError, print_json};
use clap::Args;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;

/// Arguments of `kraken ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Include destroyed deployments.
    #[arg(long, short)]
    pub all: bool,
}

/// Arguments of `kraken logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The deployment.
    #[arg(value_name = "DEPLOYMENT_ID")]
    pub id: String,
    /// Keep printing new lines as they come (until the deployment is destroyed or Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    /// Only the newest N lines.
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn short_commit(commit: Option<&str>) -> String {
    or_dash(commit.map(|c| c.get(..12).unwrap_or(c)))
}

/// `kraken ls`.
pub async fn ls(client: &Client, args: LsArgs, json: bool) -> Result<(), CliError> {
    let data = client
        .graphql(
            "{ getDeployments { id appName srcUrl gitBranch commit status errorReason node port resultsUrl createdAt generation } }",
            json!({}),
        )
        .await?;
    let all = data["getDeployments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<Value> = all
        .into_iter()
        .filter(|d| args.all || text(d, "status") != Some("Destroyed"))
        .collect();
    if json {
        print_json(&Value::Array(shown));
        return Ok(());
    }
    if shown.is_empty() {
        println!("no deployments (deploy one with `kraken deploy <git-url>`)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|d| {
            let status = match (text(d, "status"), text(d, "errorReason")) {
                (Some(status), Some(reason)) => {
                    let reason: String = reason.chars().take(60).collect();
                    format!("{status}: {reason}")
                }
                (status, _) => or_dash(status),
            };
            vec![
                or_dash(text(d, "id")),
                or_dash(text(d, "appName")),
                or_dash(text(d, "gitBranch")),
                short_commit(text(d, "commit")),
                or_dash(text(d, "node")),
                // A destroyed app's last URL answers no more.
                or_dash(text(d, "resultsUrl").filter(|_| !destroying(text(d, "status")))),
                status,
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["ID", "APP", "BRANCH", "COMMIT", "NODE", "URL", "STATUS"],
            &rows
        )
    );
    Ok(())
}

fn destroying(status: Option<&str>) -> bool {
    matches!(
        status,
        Some(
            "DestructionRequested"
                | "DelegatingDestruction"
                | "DestructionInProgress"
                | "Destroyed"
        )
    )
}

fn role(rank: Option<u64>) -> &'static str {
    match rank {
        Some(0) => "orchestrator",
        Some(1) => "standby",
        Some(_) => "observer",
        None => "worker",
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `kraken nodes`.
pub async fn nodes(client: &Client, json: bool) -> Result<(), CliError> {
    let data = client
        .graphql(
            "{ getNodes { id addr model hostname cpus cpuPercent ramUsed ramFree ramTotal currentRamPercent loadAvg5 uptime orchestrationPriority updateTime deployments draining } }",
            json!({}),
        )
        .await?;
    let nodes = data["getNodes"].as_array().cloned().unwrap_or_default();
    if json {
        print_json(&Value::Array(nodes));
        return Ok(());
    }
    if nodes.is_empty() {
        println!("no nodes have reported yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let num = |k: &str| n.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            vec![
                or_dash(text(n, "id")),
                or_dash(text(n, "addr")),
                if n["draining"].as_bool() == Some(true) {
                    format!("{} (draining)", role(n["orchestrationPriority"].as_u64()))
                } else {
                    role(n["orchestrationPriority"].as_u64()).to_owned()
                },
                format!("{}", n["cpus"].as_u64().unwrap_or(0)),
                format!("{:.0}%", num("cpuPercent")),
                format!("{}/{} MiB", num("ramUsed") as u64, num("ramTotal") as u64),
                format!("{:.2}", num("loadAvg5")),
                format!("{}", n["deployments"].as_array().map_or(0, Vec::len)),
                duration(n["uptime"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "ID", "ADDRESS", "ROLE", "CPUS", "CPU", "RAM", "LOAD5", "APPS", "UPTIME"
            ],
            &rows
        )
    );
    Ok(())
}

/// `<time> [<stream>] <text>` as JSON.
fn line_json(line: &str) -> Value {
    let (time, rest) = line.split_once(' ').unwrap_or(("", line));
    let (stream, text) = rest
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .map_or(("", rest), |(stream, text)| (stream, text));
    json!({ "time": time, "stream": stream, "text": text })
}

/// `kraken logs`.
pub async fn logs(client: &Client, args: LogsArgs, json: bool) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(n) = args.tail {
        query.push(format!("tail={n}"));
    }
    if args.follow {
        query.push("follow=true".to_owned());
    }
    let path = if query.is_empty() {
        format!("/log/{}", urlencode(&args.id))
    } else {
        format!("/log/{}?{}", urlencode(&args.id), query.join("&"))
    };
    let mut response = client.stream(&path).await?;
    let mut pending = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = client.chunk(&mut response).await? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end_matches('\n');
            let written = if json {
                writeln!(out, "{}", line_json(line))
            } else {
                writeln!(out, "{line}")
            };
            // The reader went away (e.g. `| head`): stop quietly.
            if written.and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Percent-encodes what is not an id character, so that the server sees (and refuses) the
/// id as given instead of a different path.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `kraken status`.
pub async fn status(client: &Client, json: bool) -> Result<(), CliError> {
    let data = client
        .graphql(
            "{ getPlatform { orchestrator epoch apiAddr brokerUrl } getPlatformServices { name kind address } getNodes { id } getDeployments { status } }",
            json!({}),
        )
        .await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for d in data["getDeployments"].as_array().into_iter().flatten() {
        *counts
            .entry(text(d, "status").unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let nodes = data["getNodes"].as_array().map_or(0, Vec::len);
    if json {
        print_json(&json!({
            "platform": data["getPlatform"],
            "services": data["getPlatformServices"],
            "nodes": nodes,
            "deployments": counts,
        }));
        return Ok(());
    }
    let platform = &data["getPlatform"];
    let total: usize = counts.values().sum();
    let by_status: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let runtime = data["getPlatformServices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| text(s, "name") == Some("runtime"))
        .and_then(|s| text(s, "kind"));
    let rows = vec![
        vec![
            "orchestrator".to_owned(),
            format!(
                "{} (epoch {})",
                or_dash(text(platform, "orchestrator")),
                platform["epoch"]
            ),
        ],
        vec![
            "api".to_owned(),
            text(platform, "apiAddr")
                .map_or_else(|| client.base().to_owned(), |a| format!("http://{a}")),
        ],
        vec!["broker".to_owned(), or_dash(text(platform, "brokerUrl"))],
        vec!["runtime".to_owned(), or_dash(runtime)],
        vec!["nodes".to_owned(), nodes.to_string()],
        vec![
            "deployments".to_owned(),
            if by_status.is_empty() {
                "0".to_owned()
            } else {
                format!("{total} ({})", by_status.join(", "))
            },
        ],
    ];
    for row in rows {
        println!("{:<13}{}", row[0], row[1]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_become_json() {
        assert_eq!(
            line_json("2026-01-01T00:00:00.000Z [build] step 1"),
            json!({ "time": "2026-01-01T00:00:00.000Z", "stream": "build", "text": "step 1" })
        );
        assert_eq!(urlencode("dep-1"), "dep-1");
        assert_eq!(urlencode("../x"), "..%2Fx");
        assert_eq!(duration(90_061), "1d1h");
    }
}
