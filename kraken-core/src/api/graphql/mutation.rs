//! Requests.

use super::context::{
    TokenRequired, coded, core, parse_deployment, parse_node, replicated, state_error,
    unknown_deployment,
};
use crate::model::StatusKind;
use crate::state::StateError;
use async_graphql::{Context, Object, Result};

/// Requests. Each needs the token.
pub(crate) struct Mutation;

#[Object]
impl Mutation {
    /// Deploys `gitBranch` of the repository at `deploymentUrl`; returns the new deployment's
    /// id. The URL and branch are checked first.
    #[graphql(guard = "TokenRequired")]
    async fn create_deployment(
        &self,
        ctx: &Context<'_>,
        deployment_url: String,
        git_branch: String,
    ) -> Result<String> {
        let d = core(ctx)?
            .db
            .create_deployment(&deployment_url, &git_branch)
            .map_err(state_error)?;
        replicated(ctx).await?;
        tracing::info!(deployment = %d.id, branch = %git_branch, "deployment requested through the API");
        Ok(d.id.to_string())
    }

    /// Asks for a redeploy: the branch head is looked up and deployed if it moved (or
    /// always after an error). False if a redeploy is already pending.
    #[graphql(guard = "TokenRequired")]
    async fn poll_redeploy(&self, ctx: &Context<'_>, deployment_id: String) -> Result<bool> {
        let id = parse_deployment(&deployment_id)?;
        let db = &core(ctx)?.db;
        let d = db.deployment(&id).ok_or_else(|| unknown_deployment(&id))?;
        if d.status.kind() == StatusKind::UpdateRequested {
            return Ok(false);
        }
        db.request_redeploy(&id).map_err(|e| match e {
            StateError::Transition(t) => coded(
                "CONFLICT",
                format!("deployment {id} is {}: a redeploy can be asked for when it is Running or Errored", t.from),
            ),
            other => state_error(other),
        })?;
        replicated(ctx).await?;
        Ok(true)
    }

    /// Destroys a deployment. False if it is already being destroyed or gone.
    #[graphql(guard = "TokenRequired")]
    async fn cancel_deployment(&self, ctx: &Context<'_>, deployment_id: String) -> Result<bool> {
        let id = parse_deployment(&deployment_id)?;
        let db = &core(ctx)?.db;
        let d = db.deployment(&id).ok_or_else(|| unknown_deployment(&id))?;
        if d.status.is_destroying() {
            return Ok(false);
        }
        db.request_destroy(&id).map_err(state_error)?;
        replicated(ctx).await?;
        tracing::info!(deployment = %id, "destroy requested through the API");
        Ok(true)
    }

    /// Drains a node: its deployments are placed on other nodes, then it is removed from
    /// the platform. True once the drain is recorded (also when it was already draining).
    #[graphql(guard = "TokenRequired")]
    async fn drain_node(&self, ctx: &Context<'_>, node_id: String) -> Result<bool> {
        let id = parse_node(&node_id)?;
        let core = core(ctx)?;
        if core.platform().orchestrator.as_deref() == Some(id.as_str()) {
            return Err(coded(
                "CONFLICT",
                format!("node {id} is the orchestrator: it cannot be drained"),
            ));
        }
        core.db.request_drain(&id).map_err(state_error)?;
        tracing::info!(node = %id, "drain requested through the API");
        Ok(true)
    }

    /// Deletes a deployment's log (in memory and on disk). False if it had none.
    #[graphql(guard = "TokenRequired")]
    async fn delete_log(&self, ctx: &Context<'_>, log_id: String) -> Result<bool> {
        let id = parse_deployment(&log_id)?;
        let db = &core(ctx)?.db;
        if db.logs(&id, Some(0)).is_none() {
            return Err(coded("NOT_FOUND", format!("no log {id}")));
        }
        let deleted = db.delete_log(&id).await.map_err(state_error)?;
        tracing::info!(deployment = %id, deleted, "log deleted through the API");
        Ok(deleted)
    }
}
