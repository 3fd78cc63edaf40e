//! [`ApiState`]: what a server is built from.

use super::auth::ApiToken;
use super::config::ApiConfig;
use super::error::ApiError;
use super::facts::NodeFacts;
use crate::state::Database;
use std::sync::Arc;

/// Everything the API serves from: the database, its settings and token, and what it knows
/// about the node it runs on. Build it with [`ApiState::new`], give it to
/// [`serve`](super::serve) or [`Server::new`](super::Server::new).
#[derive(Debug, Clone)]
pub struct ApiState {
    pub(crate) db: Arc<Database>,
    pub(crate) config: ApiConfig,
    pub(crate) token: ApiToken,
    pub(crate) node: NodeFacts,
}

impl ApiState {
    /// State over `db`. Uses `config.token`, or generates a random token (see
    /// [`token`](Self::token)).
    pub fn new(db: Arc<Database>, config: ApiConfig) -> Result<Self, ApiError> {
        let token = match &config.token {
            Some(token) => token.clone(),
            None => ApiToken::generate()?,
        };
        Ok(ApiState {
            db,
            config,
            token,
            node: NodeFacts::default(),
        })
    }

    /// Takes the platform info, runtime and transport names and the join check from the
    /// node this API runs on.
    #[must_use]
    pub fn with_node(mut self, node: NodeFacts) -> Self {
        self.node = node;
        self
    }

    /// The token mutations need.
    pub fn token(&self) -> &ApiToken {
        &self.token
    }
}
