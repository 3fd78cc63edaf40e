//! The HTTP API over real HTTP against a running in-process platform: an orchestrator
//! serving the API, workers on the fake runtime, real git repositories. Every query,
//! mutation and subscription; the REST routes; bad input of every kind.
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/git.rs"]
mod git;

use cluster::{Cluster, orchestrator_config, wait_status, wait_until};
use futures::{SinkExt, StreamExt};
use git::{GitRepo, manifest};
use kraken_core::api::{ApiConfig, ApiToken};
use kraken_core::executor::orchestrator::OrchestratorConfig;
use kraken_core::model::{DeploymentId, StatusKind};
use kraken_core::runtime::Runtime;
use kraken_core::runtime::fake::FakeRuntime;
use kraken_core::state::{Database, StateConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-token-0123456789abcdef";

/// A platform with its API, and a client for it.
struct Platform {
    cluster: Cluster,
    addr: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

async fn platform(workers: usize, api: ApiConfig) -> Platform {
    let data = tempfile::tempdir().unwrap();
    let db = Database::open(&data.path().join("orchestrator"), StateConfig::default())
        .await
        .unwrap();
    platform_on(db, data, workers, api).await
}

async fn platform_on(
    db: Arc<Database>,
    data: tempfile::TempDir,
    workers: usize,
    api: ApiConfig,
) -> Platform {
    let api = api
        .bind("127.0.0.1:0".parse().unwrap())
        .token(ApiToken::new(TOKEN).unwrap());
    let config = OrchestratorConfig {
        api: Some(api),
        ..orchestrator_config()
    };
    let mut cluster = Cluster::with_config(db, config);
    for i in 0..workers {
        cluster.add_worker(
            &format!("worker-{i}"),
            Arc::new(FakeRuntime::new().with_unique_ports()) as Arc<dyn Runtime>,
        );
    }
    cluster.wait_nodes(workers).await;
    let mut platform = cluster
        .orchestrator
        .as_ref()
        .unwrap()
        .context()
        .watch_platform();
    let info = tokio::time::timeout(
        LIMIT,
        platform.wait_for(|p| p.as_ref().is_some_and(|p| p.api_addr.is_some())),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    Platform {
        cluster,
        addr: info.api_addr.unwrap(),
        http: reqwest::Client::new(),
        _data: data,
    }
}

impl Platform {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GraphQL request; the whole response (data and errors).
    async fn graphql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// The data of a GraphQL request made with the token; panics on errors.
    async fn data(&self, query: &str, variables: Value) -> Value {
        let response = self.graphql(query, variables, Some(TOKEN)).await;
        assert!(response.get("errors").is_none(), "{query}: {response}");
        response["data"].clone()
    }

    /// The `extensions.code` of the first error of a GraphQL request.
    async fn error_code(&self, query: &str, variables: Value, token: Option<&str>) -> String {
        let response = self.graphql(query, variables, token).await;
        let code = response["errors"][0]["extensions"]["code"].as_str();
        code.unwrap_or_else(|| panic!("{query}: expected an error: {response}"))
            .to_owned()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn assert_serving(&self) {
        let response = self.get("/ping").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "pong");
    }

    async fn create(&self, url: &str) -> DeploymentId {
        let data = self
            .data("mutation($u: String!) { createDeployment(deploymentUrl: $u, gitBranch: \"main\") }", json!({ "u": url }))
            .await;
        DeploymentId::parse(data["createDeployment"].as_str().unwrap()).unwrap()
    }

    /// Sends a raw request line (for paths an HTTP client would normalise) and returns the
    /// status code.
    async fn raw_status(&self, method: &str, path: &str, token: Option<&str>) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: kraken\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"))
    }

    async fn shutdown(self) {
        let Platform { cluster, _data, .. } = self;
        tokio::time::timeout(LIMIT, cluster.shutdown())
            .await
            .expect("the platform stops even with clients connected");
    }
}

fn app(name: &str, env: &[(&str, &str)]) -> GitRepo {
    GitRepo::with_manifest(&manifest(name, 8080, "python3 -m http.server $PORT", env))
}

const SEED_DEPLOYMENTS: &str = "{ getDeployments { id srcUrl version commit status memMb maxMemMb cpuUsage size port statusHistory { status time } resultsUrl deploymentUrl node } }";
const SEED_NODES: &str =
    "{ getNodes { id model addr ramUsed ramFree currentRamPercent uptime loadAvg5 } }";

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn sorted(mut v: Vec<&'static str>) -> Vec<&'static str> {
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_original_schema_gets_data_in_that_shape() {
    let p = platform(2, ApiConfig::default()).await;
    let repo = app("seed-app", &[("FAKE_LOG_LINES", "3")]);
    let first_commit = repo.head();

    // createDeployment(deploymentUrl:, gitBranch:) → the id.
    let data = p
        .data(
            &format!(
                "mutation {{ createDeployment(deploymentUrl: \"{}\", gitBranch: \"main\") }}",
                repo.url()
            ),
            json!({}),
        )
        .await;
    let id = DeploymentId::parse(data["createDeployment"].as_str().unwrap()).unwrap();
    let d = wait_status(&p.cluster.db, &id, StatusKind::Running, LIMIT).await;
    // Stats come with the worker's next stats report.
    wait_until(LIMIT, || {
        p.cluster.db.deployment(&id).unwrap().stats.is_some()
    })
    .await;

    let data = p.data(SEED_DEPLOYMENTS, json!({})).await;
    let list = data["getDeployments"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    let got = &list[0];
    assert_eq!(
        keys(got),
        sorted(vec![
            "id",
            "srcUrl",
            "version",
            "commit",
            "status",
            "memMb",
            "maxMemMb",
            "cpuUsage",
            "size",
            "port",
            "statusHistory",
            "resultsUrl",
            "deploymentUrl",
            "node"
        ])
    );
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["srcUrl"], repo.url());
    assert_eq!(got["deploymentUrl"], repo.url());
    assert_eq!(got["version"], "1.0.0");
    assert_eq!(got["commit"], first_commit);
    assert_eq!(got["status"], "Running");
    assert_eq!(got["port"], d.port.unwrap());
    assert_eq!(got["resultsUrl"].as_str(), d.url.as_deref());
    assert_eq!(got["node"].as_str(), d.node.as_ref().map(|n| n.as_str()));
    assert_eq!(got["memMb"], 32.0, "the fake runtime reports 32 MiB");
    assert!(got["cpuUsage"].as_f64().unwrap() > 0.0);
    assert!(got["maxMemMb"].is_null() && got["size"].is_null());
    let history = got["statusHistory"].as_array().unwrap();
    assert_eq!(history[0]["status"], "DeploymentRequested");
    assert_eq!(history.last().unwrap()["status"], "Running");
    let time = history[0]["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339: {time}"
    );

    let data = p.data(SEED_NODES, json!({})).await;
    let nodes = data["getNodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        keys(&nodes[0]),
        sorted(vec![
            "id",
            "model",
            "addr",
            "ramUsed",
            "ramFree",
            "currentRamPercent",
            "uptime",
            "loadAvg5"
        ])
    );
    assert_eq!(nodes[0]["ramUsed"], 4096);
    assert_eq!(nodes[0]["ramFree"], 4096);
    assert_eq!(nodes[0]["currentRamPercent"], 50.0);
    assert_eq!(nodes[0]["addr"], "127.0.0.1");

    // getDeployment and getNode, with the extras.
    let data = p
        .data(
            "query($id: String!) { getDeployment(deploymentId: $id) { id gitBranch status errorReason generation appName appUrl createdAt
               manifest { name version port lang run envKeys } logs(tail: 50) { time stream text } placedOn { id } } }",
            json!({ "id": id.as_str() }),
        )
        .await;
    let got = &data["getDeployment"];
    assert_eq!(got["gitBranch"], "main");
    assert!(got["errorReason"].is_null());
    assert_eq!(got["generation"], 1);
    assert_eq!(got["appName"], "seed-app");
    assert_eq!(got["appUrl"].as_str(), d.url.as_deref());
    assert_eq!(got["manifest"]["lang"], "python");
    assert_eq!(got["manifest"]["envKeys"], json!(["FAKE_LOG_LINES"]));
    assert_eq!(
        got["placedOn"]["id"].as_str(),
        d.node.as_ref().map(|n| n.as_str())
    );
    let lines = got["logs"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["stream"] == "build"), "{lines:?}");
    let node = d.node.clone().unwrap();
    let data = p
        .data(
            "query($id: String!) { getNode(nodeId: $id) { id orchestrationPriority updateTime deployments hostname cpus ramTotal deploymentDetails { id } } }",
            json!({ "id": node.as_str() }),
        )
        .await;
    assert_eq!(data["getNode"]["deployments"], json!([id.as_str()]));
    assert_eq!(data["getNode"]["deploymentDetails"][0]["id"], id.as_str());
    assert!(
        data["getNode"]["orchestrationPriority"].is_null(),
        "a plain worker has no rollover rank"
    );
    assert_eq!(data["getNode"]["cpus"], 4);

    let data = p
        .data(
            "{ getPlatform { orchestrator epoch apiAddr brokerUrl candidates } }",
            json!({}),
        )
        .await;
    assert_eq!(data["getPlatform"]["orchestrator"], "orchestrator");
    assert_eq!(data["getPlatform"]["epoch"], 1);
    assert_eq!(data["getPlatform"]["apiAddr"], p.addr);
    assert!(
        data["getPlatform"]["brokerUrl"].is_null(),
        "the memory transport has no broker"
    );
    let data = p
        .data("{ getPlatformServices { name kind address } }", json!({}))
        .await;
    let services = data["getPlatformServices"].as_array().unwrap();
    assert!(services.contains(
        &json!({ "name": "api", "kind": "http", "address": format!("http://{}", p.addr) })
    ));
    assert!(services.contains(&json!({ "name": "transport", "kind": "memory", "address": null })));
    assert!(services.contains(&json!({ "name": "runtime", "kind": "fake", "address": null })));

    let data = p.data("{ getAvailableLogs }", json!({})).await;
    assert_eq!(data["getAvailableLogs"], json!([id.as_str()]));

    // pollRedeploy: a new commit is deployed.
    let second = repo.commit(&[("index.html", "v2")], "v2");
    let data = p
        .data(
            "mutation($id: String!) { pollRedeploy(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["pollRedeploy"], true);
    wait_until(LIMIT, || {
        p.cluster.db.deployment(&id).unwrap().commit.as_deref() == Some(second.as_str())
    })
    .await;
    let d = wait_status(&p.cluster.db, &id, StatusKind::Running, LIMIT).await;
    assert_eq!(d.generation, 2);

    // A deployment that fails says why.
    let broken = app("broken", &[("FAKE_BUILD_ERROR", "no compiler here")]);
    let failed = p.create(&broken.url()).await;
    wait_status(&p.cluster.db, &failed, StatusKind::Errored, LIMIT).await;
    let data = p
        .data(
            "query($id: String!) { getDeployment(deploymentId: $id) { status errorReason } }",
            json!({ "id": failed.as_str() }),
        )
        .await;
    assert_eq!(data["getDeployment"]["status"], "Errored");
    assert!(
        data["getDeployment"]["errorReason"]
            .as_str()
            .unwrap()
            .contains("no compiler here")
    );

    // cancelDeployment, then deleteLog.
    for target in [&id, &failed] {
        let data = p
            .data(
                "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
                json!({ "id": target.as_str() }),
            )
            .await;
        assert_eq!(data["cancelDeployment"], true);
        wait_status(&p.cluster.db, target, StatusKind::Destroyed, LIMIT).await;
    }
    let data = p
        .data(
            "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["cancelDeployment"], false, "already destroyed");
    let data = p
        .data(
            "mutation($id: String!) { deleteLog(logId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["deleteLog"], true);
    let data = p.data("{ getAvailableLogs }", json!({})).await;
    assert_eq!(data["getAvailableLogs"], json!([failed.as_str()]));
    let data = p
        .data(
            "mutation($id: String!) { deleteLog(logId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["deleteLog"], false, "nothing left to delete");
    p.shutdown().await;
}

/// A websocket client speaking `graphql-transport-ws` (or the older `graphql-ws`).
struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    legacy: bool,
}

impl Ws {
    async fn connect(p: &Platform, protocol: &str, payload: Value) -> Result<Ws, String> {
        let mut request = format!("ws://{}/graphql", p.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        let mut ws = Ws {
            socket,
            legacy: protocol == "graphql-ws",
        };
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        loop {
            let message = ws.next().await.ok_or("closed before the ack")?;
            match message["type"].as_str() {
                Some("connection_ack") => return Ok(ws),
                Some("ka") => {}
                _ => return Err(message.to_string()),
            }
        }
    }

    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn subscribe(&mut self, id: &str, query: &str) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(json!({ "id": id, "type": kind, "payload": { "query": query } }))
            .await;
    }

    /// The next protocol message (keep-alives skipped); `None` once closed.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(LIMIT, self.socket.next())
                .await
                .expect("a message in time")?;
            match message {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "ka" || value["type"] == "ping" {
                        continue;
                    }
                    return Some(value);
                }
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| json!({ "type": "close", "code": u16::from(f.code), "reason": f.reason.as_str() }));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next protocol message about operation `id`.
    async fn next_for(&mut self, id: &str) -> Option<Value> {
        loop {
            let message = self.next().await?;
            if message["id"] == id {
                return Some(message);
            }
        }
    }

    /// The next `data` payload of subscription `id`; `None` when it completed.
    async fn data(&mut self, id: &str) -> Option<Value> {
        loop {
            let message = self.next().await?;
            if message["id"] != id {
                continue;
            }
            match message["type"].as_str() {
                Some("next" | "data") => {
                    assert!(message["payload"].get("errors").is_none(), "{message}");
                    return Some(message["payload"]["data"].clone());
                }
                Some("complete") => return None,
                _ => panic!("unexpected message {message}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stream_status_changes_and_log_lines() {
    let p = platform(1, ApiConfig::default()).await;
    let repo = app(
        "live",
        &[
            ("FAKE_BUILD_DELAY_MS", "300"),
            ("FAKE_START_DELAY_MS", "300"),
            ("FAKE_LOG_LINES", "3"),
        ],
    );

    let mut all = Ws::connect(&p, "graphql-transport-ws", json!({}))
        .await
        .unwrap();
    all.subscribe(
        "all",
        "subscription { deploymentChanged { id status generation } }",
    )
    .await;
    // The subscription is live once the server has registered it; a query on the same
    // connection is answered after it.
    all.subscribe("probe", "{ getPlatform { epoch } }").await;
    assert!(all.data("probe").await.is_some());

    let id = p.create(&repo.url()).await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("Running") {
        let data = all.data("all").await.expect("the subscription goes on");
        if data["deploymentChanged"]["id"] == id.as_str() {
            seen.push(
                data["deploymentChanged"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    assert_eq!(
        seen,
        [
            "DeploymentRequested",
            "ValidatingDeploymentData",
            "RetrievingApplicationData",
            "DelegatingDeployment",
            "BuildingDeployment",
            "Deploying",
            "Running"
        ],
        "every status, in order"
    );

    // logLines with the kept tail first, over the older protocol.
    let mut logs = Ws::connect(&p, "graphql-ws", json!({})).await.unwrap();
    logs.subscribe(
        "logs",
        &format!(
            "subscription {{ logLines(deploymentId: \"{id}\", tail: 1000) {{ time stream text }} }}"
        ),
    )
    .await;
    let mut texts = Vec::new();
    while !texts.iter().any(|t: &String| t == "line 3") {
        let data = logs.data("logs").await.expect("log lines");
        texts.push(data["logLines"]["text"].as_str().unwrap().to_owned());
    }
    assert!(
        texts.iter().any(|t| t.starts_with("fake build of")),
        "{texts:?}"
    );

    // A subscription to one deployment sees it destroyed, then completes.
    let mut one = Ws::connect(&p, "graphql-transport-ws", json!({}))
        .await
        .unwrap();
    one.subscribe(
        "one",
        &format!("subscription {{ deploymentChanged(deploymentId: \"{id}\") {{ status }} }}"),
    )
    .await;
    one.subscribe("probe", "{ getPlatform { epoch } }").await;
    assert!(one.data("probe").await.is_some());
    let data = p
        .data(
            "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["cancelDeployment"], true);
    let mut statuses = Vec::new();
    while let Some(data) = one.data("one").await {
        statuses.push(
            data["deploymentChanged"]["status"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("Destroyed"),
        "{statuses:?}"
    );
    // The log subscription ends too.
    while logs.data("logs").await.is_some() {}
    // Subscribing to what is already destroyed gets what there is, then the end.
    one.subscribe(
        "late",
        &format!("subscription {{ deploymentChanged(deploymentId: \"{id}\") {{ status }} }}"),
    )
    .await;
    assert_eq!(
        one.data("late").await.unwrap()["deploymentChanged"]["status"],
        "Destroyed"
    );
    assert!(one.data("late").await.is_none());
    one.subscribe(
        "late-logs",
        &format!("subscription {{ logLines(deploymentId: \"{id}\", tail: 1) {{ text }} }}"),
    )
    .await;
    assert!(one.data("late-logs").await.is_some());
    assert!(one.data("late-logs").await.is_none());

    // Mutations over the websocket need the token as well.
    let mut anonymous = Ws::connect(&p, "graphql-transport-ws", json!({}))
        .await
        .unwrap();
    anonymous
        .subscribe(
            "m",
            &format!(
                "mutation {{ createDeployment(deploymentUrl: \"{}\", gitBranch: \"main\") }}",
                repo.url()
            ),
        )
        .await;
    let reply = anonymous.next_for("m").await.unwrap();
    assert_eq!(
        reply["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{reply}"
    );
    let mut authorised = Ws::connect(
        &p,
        "graphql-transport-ws",
        json!({ "Authorization": format!("Bearer {TOKEN}") }),
    )
    .await
    .unwrap();
    authorised
        .subscribe(
            "m",
            &format!(
                "mutation {{ createDeployment(deploymentUrl: \"{}\", gitBranch: \"main\") }}",
                repo.url()
            ),
        )
        .await;
    let created = authorised.data("m").await.unwrap();
    assert!(
        created["createDeployment"]
            .as_str()
            .unwrap()
            .starts_with("dep-")
    );
    assert_eq!(
        p.cluster.db.deployments().len(),
        2,
        "only the authorised mutation created one"
    );
    // Subscriptions to what does not exist are refused clearly.
    authorised
        .subscribe(
            "bad",
            "subscription { logLines(deploymentId: \"../x\") { text } }",
        )
        .await;
    let reply = authorised.next_for("bad").await.unwrap();
    assert_eq!(
        reply["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{reply}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_answer_as_documented() {
    let p = platform(1, ApiConfig::default()).await;
    let repo = app("rest", &[("FAKE_LOG_LINES", "5")]);
    let id = p.create(&repo.url()).await;
    wait_status(&p.cluster.db, &id, StatusKind::Running, LIMIT).await;
    wait_until(LIMIT, || {
        p.cluster
            .db
            .logs(&id, None)
            .unwrap()
            .iter()
            .any(|l| l.text == "line 5")
    })
    .await;

    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirect.get(p.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/index.html");
    let index = p.get("/").await;
    assert_eq!(index.status(), 200);
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.text().await.unwrap().contains("Kraken"));
    p.assert_serving().await;

    // Health: a worker has no rank; the orchestrator is the primary.
    let health: Value = p.get("/health/worker-0").await.json().await.unwrap();
    assert_eq!(
        health,
        json!({ "node": "worker-0", "rank": null, "role": "worker", "epoch": 1, "accepting": false })
    );
    let health: Value = p.get("/health/orchestrator").await.json().await.unwrap();
    assert_eq!(
        health,
        json!({ "node": "orchestrator", "rank": 0, "role": "primary", "epoch": 1, "accepting": true })
    );
    assert_eq!(p.get("/health/node-nobody").await.status(), 404);

    // Logs: every line, the tail, the format.
    let text = p.get(&format!("/log/{id}")).await.text().await.unwrap();
    assert!(text.lines().count() >= 5, "{text}");
    for line in text.lines() {
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{line}");
        assert!(
            ["[build] ", "[stdout] ", "[stderr] ", "[kraken] "]
                .iter()
                .any(|s| rest.starts_with(s)),
            "{line}"
        );
    }
    let tail = p
        .get(&format!("/log/{id}?tail=2"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(tail.lines().count(), 2);
    assert!(tail.ends_with("[stdout] line 5\n"), "{tail}");
    assert_eq!(p.get(&format!("/log/{id}?tail=lots")).await.status(), 400);

    // Platform and metrics.
    let platform: Value = p.get("/platform").await.json().await.unwrap();
    assert_eq!(platform["orchestrator"], "orchestrator");
    assert_eq!(platform["api_addr"], p.addr);
    assert_eq!(platform["epoch"], 1);
    let metrics = p.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("kraken_deployments{status=\"Running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kraken_nodes 1"), "{metrics}");
    assert!(
        metrics.contains("kraken_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kraken_messages_handled_total{message=\"SysinfoMessage\"}"),
        "{metrics}"
    );

    // GraphiQL, on its route and for a browser's GET of /graphql.
    for path in ["/graphiql", "/graphql"] {
        let page = p.get(path).await;
        assert_eq!(page.status(), 200);
        assert!(
            page.text()
                .await
                .unwrap()
                .to_lowercase()
                .contains("graphiql")
        );
    }

    // Every route of the OpenAPI document answers with one of its documented statuses.
    let doc: Value = p.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, operations) in paths {
        let concrete = path
            .replace("{node_id}", "worker-0")
            .replace("{deployment_id}", id.as_str());
        for (method, operation) in operations.as_object().unwrap() {
            if method == "delete" {
                continue; // below, so the log stays for the other routes
            }
            let documented: Vec<u16> = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let request = match method.as_str() {
                "get" => no_redirect.get(p.url(&concrete)),
                "post" => no_redirect
                    .post(p.url(&concrete))
                    .json(&json!({ "query": "{ getPlatform { epoch } }" })),
                other => panic!("undocumented method {other}"),
            };
            let status = request.send().await.unwrap().status().as_u16();
            assert!(
                documented.contains(&status),
                "{method} {concrete} answered {status}, documented {documented:?}"
            );
        }
    }
    let deleted = no_redirect
        .delete(p.url(&format!("/log/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        deleted.json::<Value>().await.unwrap(),
        json!({ "deleted": true })
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines_until_the_deployment_is_destroyed() {
    let p = platform(1, ApiConfig::default().max_streams(2)).await;
    let repo = app("follow", &[("FAKE_LOG_LINES", "2")]);
    let id = p.create(&repo.url()).await;
    wait_status(&p.cluster.db, &id, StatusKind::Running, LIMIT).await;

    let mut follow = p.get(&format!("/log/{id}?follow=true")).await;
    assert_eq!(follow.status(), 200);
    let mut received = String::new();
    // Kept lines come first.
    while !received.contains("placed on") {
        received.push_str(&String::from_utf8_lossy(
            &follow.chunk().await.unwrap().unwrap(),
        ));
    }
    // New lines as they come: a redeploy request notes the unchanged branch head.
    let data = p
        .data(
            "mutation($id: String!) { pollRedeploy(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["pollRedeploy"], true);
    while !received.contains("nothing to redeploy") {
        let chunk = tokio::time::timeout(LIMIT, follow.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    wait_status(&p.cluster.db, &id, StatusKind::Running, LIMIT).await;

    // Streams are bounded: with two open, a third is refused.
    let second = p.get(&format!("/log/{id}?follow=true")).await;
    assert_eq!(second.status(), 200);
    let third = p.get(&format!("/log/{id}?follow=true")).await;
    assert_eq!(third.status(), 503);
    // A client that leaves frees its stream.
    drop(second);
    let mut freed = false;
    for _ in 0..100 {
        let metrics = p.get("/metrics").await.text().await.unwrap();
        if metrics.contains("kraken_api_open_streams 1") {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the stream of a client that left is closed");

    // Destroying the deployment ends the stream.
    let data = p
        .data(
            "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
        )
        .await;
    assert_eq!(data["cancelDeployment"], true);
    while let Some(chunk) = tokio::time::timeout(LIMIT, follow.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(
        p.cluster.db.deployment(&id).unwrap().status.kind(),
        StatusKind::Destroyed
    );
    // A follow of a destroyed deployment returns what is kept and ends.
    let ended = p
        .get(&format!("/log/{id}?follow=true"))
        .await
        .text()
        .await
        .unwrap();
    assert!(ended.contains("placed on"));

    // Shutting down ends open streams instead of waiting for their clients.
    let other = p.create(&repo.url()).await;
    wait_status(&p.cluster.db, &other, StatusKind::Running, LIMIT).await;
    let mut open = p.get(&format!("/log/{other}?follow=true")).await;
    assert!(open.chunk().await.unwrap().is_some());
    let mut ws = Ws::connect(&p, "graphql-transport-ws", json!({}))
        .await
        .unwrap();
    ws.subscribe("s", "subscription { deploymentChanged { status } }")
        .await;
    p.shutdown().await;
    while let Ok(Some(_)) = open.chunk().await {}
    while ws.next().await.is_some() {}
}

/// Every file under `dir` with its content (the redb file's bytes change with every write
/// transaction, so only its presence counts; its content is compared through the state).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let content = if path.extension().is_some_and(|e| e == "redb") {
                    Vec::new()
                } else {
                    std::fs::read(&path).unwrap()
                };
                files.insert(
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    content,
                );
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("secret.log"), "do not delete").unwrap();
    let db = Database::open(&data.path().join("orchestrator"), StateConfig::default())
        .await
        .unwrap();
    let data_path = data.path().to_path_buf();
    // No workers: the deployment waits for one and nothing moves while the test runs.
    let p = platform_on(Arc::clone(&db), data, 0, ApiConfig::default()).await;
    let repo = app("still", &[]);
    let id = p.create(&repo.url()).await;
    wait_status(&db, &id, StatusKind::DelegatingDeployment, LIMIT).await;
    wait_until(LIMIT, || {
        db.logs(&id, None)
            .unwrap()
            .iter()
            .any(|l| l.text.contains("waiting for a worker"))
    })
    .await;
    db.flush().await.unwrap();
    let files_before = snapshot(&data_path);
    let state_before = serde_json::to_string(&db.deployments()).unwrap();
    let logs_before = db.logs(&id, None).unwrap();
    assert!(
        files_before
            .keys()
            .any(|f| f.starts_with("orchestrator/logs")),
        "{:?}",
        files_before.keys()
    );

    // Unknown ids.
    let unknown = DeploymentId::random();
    let vars = json!({ "id": unknown.as_str() });
    for query in [
        "query($id: String!) { getDeployment(deploymentId: $id) { id } }",
        "mutation($id: String!) { pollRedeploy(deploymentId: $id) }",
        "mutation($id: String!) { cancelDeployment(deploymentId: $id) }",
        "mutation($id: String!) { deleteLog(logId: $id) }",
    ] {
        assert_eq!(
            p.error_code(query, vars.clone(), Some(TOKEN)).await,
            "NOT_FOUND",
            "{query}"
        );
    }
    assert_eq!(
        p.error_code(
            "query($id: String!) { getNode(nodeId: $id) { id } }",
            json!({ "id": "node-nobody" }),
            None
        )
        .await,
        "NOT_FOUND"
    );
    let response = p
        .graphql(
            "mutation($id: String!) { drainNode(nodeId: $id) }",
            json!({ "id": "node-nobody" }),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{response}"
    );
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no node node-nobody"),
        "{response}"
    );
    assert_eq!(p.get(&format!("/log/{unknown}")).await.status(), 404);
    assert_eq!(
        p.get(&format!("/log/{unknown}?follow=true")).await.status(),
        404
    );
    // A redeploy of a deployment that is not running is a conflict, explained.
    let response = p
        .graphql(
            "mutation($id: String!) { pollRedeploy(deploymentId: $id) }",
            json!({ "id": id.as_str() }),
            Some(TOKEN),
        )
        .await;
    assert_eq!(response["errors"][0]["extensions"]["code"], "CONFLICT");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("DelegatingDeployment"),
        "{response}"
    );

    // Traversal attempts, in paths and in deleteLog.
    let attacks = [
        "../secret.log",
        "..",
        "%2e%2e%2fsecret.log",
        "/etc/passwd",
        "../../orchestrator/state.redb",
        "a/b",
        "",
        ".hidden",
    ];
    for attack in attacks {
        let code = p
            .error_code(
                "mutation($id: String!) { deleteLog(logId: $id) }",
                json!({ "id": attack }),
                Some(TOKEN),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "deleteLog({attack:?})");
        let code = p
            .error_code(
                "query($id: String!) { getDeployment(deploymentId: $id) { id } }",
                json!({ "id": attack }),
                None,
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "getDeployment({attack:?})");
        let code = p
            .error_code(
                "mutation($id: String!) { drainNode(nodeId: $id) }",
                json!({ "id": attack }),
                Some(TOKEN),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "drainNode({attack:?})");
    }
    for path in [
        "/log/..%2fsecret.log",
        "/log/%2e%2e%2fsecret.log",
        "/log/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/log/%2Fetc%2Fpasswd",
        "/log/..",
        "/health/..%2f..%2fetc",
    ] {
        assert_eq!(p.raw_status("GET", path, None).await, 400, "GET {path}");
        if path.starts_with("/log/") {
            assert_eq!(
                p.raw_status("DELETE", path, Some(TOKEN)).await,
                400,
                "DELETE {path}"
            );
        }
    }
    for path in [
        "/log/../secret.log",
        "/log//etc/passwd",
        "/log/../../etc/passwd",
        "/log/a/../../secret.log",
    ] {
        let status = p.raw_status("GET", path, None).await;
        assert!(status == 400 || status == 404, "GET {path}: {status}");
        let status = p.raw_status("DELETE", path, Some(TOKEN)).await;
        assert!(
            status == 400 || status == 404 || status == 405,
            "DELETE {path}: {status}"
        );
    }
    let error: Value = p
        .get("/log/%2e%2e%2fsecret.log")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(error["code"], "BAD_REQUEST");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("invalid DeploymentId"),
        "{error}"
    );
    p.assert_serving().await;

    // A 10 MB body.
    let big = format!(
        "{{\"query\": \"{{ getPlatform {{ epoch }} }}\", \"pad\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let response = p
        .http
        .post(p.url("/graphql"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await;
    match response {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => panic!("the server answers a large body with 413: {e}"),
    }
    // Without a length up front (chunked) too.
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = p
        .http
        .post(p.url("/graphql"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    assert_eq!(response.unwrap().status(), 413);
    p.assert_serving().await;

    // A query nested 50 deep.
    let mut deep = String::from("id");
    for i in 0..50 {
        deep = if i % 2 == 0 {
            format!("placedOn {{ id {deep} }}")
        } else {
            format!("deploymentDetails {{ {deep} }}")
        };
    }
    let deep = format!("{{ getDeployments {{ {deep} }} }}");
    let response = p.graphql(&deep, json!({}), None).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"));
    assert!(
        message.contains("nested too deep") || message.contains("recursion"),
        "{message}"
    );
    // Complexity: many aliases of the deployments list.
    let wide: String = (0..300)
        .map(|i| format!("a{i}: getDeployments {{ id }} "))
        .collect();
    let response = p.graphql(&format!("{{ {wide} }}"), json!({}), None).await;
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{response}"
    );
    p.assert_serving().await;

    // Missing or wrong token on every mutation.
    let mutations = [
        format!(
            "mutation {{ createDeployment(deploymentUrl: \"{}\", gitBranch: \"main\") }}",
            repo.url()
        ),
        format!("mutation {{ pollRedeploy(deploymentId: \"{id}\") }}"),
        format!("mutation {{ cancelDeployment(deploymentId: \"{id}\") }}"),
        format!("mutation {{ deleteLog(logId: \"{id}\") }}"),
        "mutation { drainNode(nodeId: \"node-nobody\") }".to_owned(),
    ];
    for mutation in &mutations {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let response = p.graphql(mutation, json!({}), token).await;
            assert_eq!(
                response["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{mutation} with {token:?}: {response}"
            );
            assert!(response["data"].is_null(), "{response}");
        }
    }
    let response = p
        .graphql(&mutations[0], json!({}), Some("wrong-token-0123456789"))
        .await;
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("wrong API token")
    );
    let refused = p
        .http
        .delete(p.url(&format!("/log/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let refused = p
        .http
        .delete(p.url(&format!("/log/{id}")))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Malformed URLs and branches.
    for (url, branch) in [
        ("not a url", "main"),
        ("", "main"),
        ("ftp://example.com/x.git", "main"),
        ("ext::sh -c touch% /tmp/pwned", "main"),
        ("file:///srv/app\nx", "main"),
        (&repo.url() as &str, "-bad"),
        (&repo.url(), "a..b"),
        (&repo.url(), ""),
        (&repo.url(), "main\u{0}"),
        (&repo.url(), "--upload-pack=touch /tmp/pwned"),
    ] {
        let code = p
            .error_code(
                "mutation($u: String!, $b: String!) { createDeployment(deploymentUrl: $u, gitBranch: $b) }",
                json!({ "u": url, "b": branch }),
                Some(TOKEN),
            )
            .await;
        assert_eq!(
            code, "BAD_USER_INPUT",
            "createDeployment({url:?}, {branch:?})"
        );
    }
    // Not GraphQL at all.
    let response = p
        .http
        .post(p.url("/graphql"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = p
        .http
        .post(p.url("/graphql"))
        .body("{ getPlatform { epoch } }")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(p.raw_status("GET", "/no/such/route", None).await, 404);
    p.assert_serving().await;

    // Nothing changed, in state or on disk.
    db.flush().await.unwrap();
    assert_eq!(
        serde_json::to_string(&db.deployments()).unwrap(),
        state_before
    );
    assert_eq!(db.logs(&id, None).unwrap(), logs_before);
    let files_after = snapshot(&data_path);
    let changed: Vec<&String> = files_after
        .keys()
        .chain(files_before.keys())
        .filter(|k| files_after.get(*k) != files_before.get(*k))
        .collect();
    assert!(changed.is_empty(), "files changed on disk: {changed:?}");
    assert!(!Path::new("/tmp/pwned").exists());
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_can_require_the_token_too() {
    let p = platform(0, ApiConfig::default().require_token_for_queries(true)).await;
    let response = p
        .http
        .post(p.url("/graphql"))
        .json(&json!({ "query": "{ getDeployments { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let data = p.data("{ getDeployments { id } }", json!({})).await;
    assert_eq!(data["getDeployments"], json!([]));
    assert_eq!(p.get("/platform").await.status(), 401);
    assert_eq!(p.get("/metrics").await.status(), 401);
    assert_eq!(
        p.get(&format!("/log/{}", DeploymentId::random()))
            .await
            .status(),
        401
    );
    let platform = p
        .http
        .get(p.url("/platform"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(platform.status(), 200);
    // Liveness and health stay open.
    p.assert_serving().await;
    assert_eq!(p.get("/health/orchestrator").await.status(), 200);
    // Websocket: refused at connection_init without the token, accepted with it.
    let refused = Ws::connect(&p, "graphql-transport-ws", json!({})).await;
    assert!(refused.is_err(), "a websocket without the token is refused");
    let mut ws = Ws::connect(&p, "graphql-transport-ws", json!({ "token": TOKEN }))
        .await
        .unwrap();
    ws.subscribe("q", "{ getPlatform { epoch } }").await;
    assert_eq!(ws.data("q").await.unwrap()["getPlatform"]["epoch"], 1);
    p.shutdown().await;
}
