//! Reads.

use super::context::{coded, core, parse_deployment, parse_node, unknown_deployment};
use super::types::{DeploymentObject, NodeObject, PlatformObject, ServiceObject};
use async_graphql::{Context, Object, Result};

/// Reads.
pub(crate) struct Query;

#[Object]
impl Query {
    /// One deployment.
    async fn get_deployment(
        &self,
        ctx: &Context<'_>,
        deployment_id: String,
    ) -> Result<DeploymentObject> {
        let id = parse_deployment(&deployment_id)?;
        core(ctx)?
            .db
            .deployment(&id)
            .map(DeploymentObject::new)
            .ok_or_else(|| unknown_deployment(&id))
    }

    /// Every deployment, oldest id first.
    #[graphql(complexity = "10 * child_complexity")]
    async fn get_deployments(&self, ctx: &Context<'_>) -> Result<Vec<DeploymentObject>> {
        Ok(core(ctx)?
            .db
            .deployments()
            .into_iter()
            .map(DeploymentObject::new)
            .collect())
    }

    /// One node.
    async fn get_node(&self, ctx: &Context<'_>, node_id: String) -> Result<NodeObject> {
        let id = parse_node(&node_id)?;
        let core = core(ctx)?;
        core.db
            .node(&id)
            .map(|n| NodeObject::new(core, n))
            .ok_or_else(|| coded("NOT_FOUND", format!("no node {id}")))
    }

    /// Every node.
    #[graphql(complexity = "10 * child_complexity")]
    async fn get_nodes(&self, ctx: &Context<'_>) -> Result<Vec<NodeObject>> {
        let core = core(ctx)?;
        Ok(core
            .db
            .nodes()
            .into_iter()
            .map(|n| NodeObject::new(core, n))
            .collect())
    }

    /// Who leads the platform.
    async fn get_platform(&self, ctx: &Context<'_>) -> Result<PlatformObject> {
        Ok(PlatformObject(core(ctx)?.platform()))
    }

    /// Ids of the deployments that have a log.
    async fn get_available_logs(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(core(ctx)?
            .db
            .log_ids()
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    /// The platform's services: this API, the transport (with its broker URL), the runtime.
    async fn get_platform_services(&self, ctx: &Context<'_>) -> Result<Vec<ServiceObject>> {
        Ok(core(ctx)?
            .services()
            .into_iter()
            .map(ServiceObject)
            .collect())
    }
}
