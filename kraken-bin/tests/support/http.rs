//! A minimal blocking HTTP/1.0 client for tests that poll an agent's API.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

/// One HTTP/1.0 request; `None` when nothing answers within 10 s.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Option<(u16, Value)> {
    request(addr, method, path, body, token, Duration::from_secs(10))
}

/// One HTTP/1.0 request answered within `timeout` (connecting within 2 s at most), else
/// `None`.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let mut stream = std::net::TcpStream::connect_timeout(
        &addr.parse().ok()?,
        timeout.min(Duration::from_secs(2)),
    )
    .ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, json) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(json).unwrap_or(Value::Null)))
}

/// A GraphQL request to the API at `addr`; `Value::Null` when nothing answers.
pub fn graphql(addr: &str, token: Option<&str>, query: &str) -> Value {
    http(
        addr,
        "POST",
        "/graphql",
        Some(&serde_json::json!({ "query": query })),
        token,
    )
    .map_or(Value::Null, |(_, v)| v)
}

/// The `createDeployment` mutation for the `main` branch of `url`.
pub fn create_deployment(url: &str) -> String {
    format!("mutation {{ createDeployment(deploymentUrl: \"{url}\", gitBranch: \"main\") }}")
}
