//! What resolvers share: the API core from the context, error codes, the token guard.

use crate::api::auth::Caller;
use crate::api::core::Core;
use crate::model::{DeploymentId, NodeId};
use crate::state::StateError;
use async_graphql::{Context, Error, ErrorExtensions, Guard, Result};
use std::sync::Arc;

pub(super) fn coded(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

pub(super) fn parse_deployment(raw: &str) -> Result<DeploymentId> {
    DeploymentId::parse(raw).map_err(|e| coded("BAD_USER_INPUT", e.to_string()))
}

pub(super) fn parse_node(raw: &str) -> Result<NodeId> {
    NodeId::parse(raw).map_err(|e| coded("BAD_USER_INPUT", e.to_string()))
}

pub(super) fn unknown_deployment(id: &DeploymentId) -> Error {
    coded("NOT_FOUND", format!("no deployment {id}"))
}

/// Waits until the standby confirmed the change just made, so that an accepted change
/// survives a failover (at once without a standby).
pub(super) async fn replicated(ctx: &Context<'_>) -> Result<()> {
    core(ctx)?
        .db
        .replicated(std::time::Duration::from_secs(5))
        .await
        .map_err(state_error)
}

pub(super) fn state_error(err: StateError) -> Error {
    match &err {
        StateError::UnknownDeployment(id) => unknown_deployment(id),
        StateError::UnknownNode(_) => coded("NOT_FOUND", err.to_string()),
        StateError::InvalidRequest(_) => coded("BAD_USER_INPUT", err.to_string()),
        StateError::Transition(_) => coded("CONFLICT", err.to_string()),
        StateError::Full { .. } => coded("RESOURCE_EXHAUSTED", err.to_string()),
        StateError::NotLeader { .. } => coded("NOT_LEADER", err.to_string()),
        StateError::NotReplicated(_) => coded("UNAVAILABLE", err.to_string()),
        StateError::Storage { .. } | StateError::Locked { .. } => {
            coded("INTERNAL", err.to_string())
        }
    }
}

pub(super) fn core<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Core>> {
    ctx.data::<Arc<Core>>()
}

/// Mutations and log deletion need the platform's token.
pub(super) struct TokenRequired;

impl Guard for TokenRequired {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let caller = ctx
            .data_opt::<Caller>()
            .copied()
            .unwrap_or(Caller::Anonymous);
        if caller.is_authenticated() {
            Ok(())
        } else {
            Err(coded("UNAUTHENTICATED", caller.refusal()))
        }
    }
}
