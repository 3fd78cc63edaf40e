//! The HTTP client of the orchestrator's API: GraphQL requests and log streams, with errors
//! sorted into the CLI's exit codes.

use super::CliError;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Talks to one orchestrator.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, CliError> {
        let addr = addr.trim().trim_end_matches('/');
        let base = if addr.starts_with("http://") {
            addr.to_owned()
        } else if addr.contains("://") {
            return Err(CliError::Usage(format!(
                "{addr}: the orchestrator is reached over http://"
            )));
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::Failed(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, err: &reqwest::Error) -> CliError {
        CliError::Unreachable(format!(
            "cannot reach the orchestrator at {}: {}",
            self.base,
            root_cause(err)
        ))
    }

    fn transport_error(&self, err: reqwest::Error) -> CliError {
        if err.is_connect() || err.is_timeout() || err.is_request() {
            self.unreachable(&err)
        } else {
            CliError::Failed(format!(
                "request to {} failed: {}",
                self.base,
                root_cause(&err)
            ))
        }
    }

    /// Runs a GraphQL operation; its `data`, or its first error as [`CliError::Failed`].
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value, CliError> {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.base))
            .timeout(Duration::from_secs(30))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(_) => {
                return Err(CliError::Failed(format!(
                    "{} answered HTTP {status} without a GraphQL response; is it a Kraken orchestrator?",
                    self.base
                )));
            }
        };
        if let Some(error) = body.get("errors").and_then(|e| e.get(0)) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let code = error
                .pointer("/extensions/code")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(CliError::Failed(if code == "UNAUTHENTICATED" {
                format!(
                    "{message}\nhint: pass --token, set KRAKEN_API_TOKEN, or run where `kraken up` saved its config"
                )
            } else {
                message.to_owned()
            }));
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Opens a text stream (`GET path`); errors are read from the JSON error body.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status() == StatusCode::OK {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        Err(CliError::Failed(message))
    }

    /// The next piece of a stream; `None` at its end.
    pub async fn chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<Vec<u8>>, CliError> {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok(chunk.map(|c| c.to_vec()))
    }
}

/// The innermost cause of an error, which says what actually happened (e.g. "Connection
/// refused").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(
            Client::new("127.0.0.1:8000", None).unwrap().base(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            Client::new("http://pi.local:8000/", None).unwrap().base(),
            "http://pi.local:8000"
        );
        assert!(matches!(
            Client::new("https://x:1", None),
            Err(CliError::Usage(_))
        ));
    }
}
