//! The schema: its roots, limits and SDL.

use super::mutation::Mutation;
use super::query::Query;
use super::subscription::SubscriptionRoot;
use crate::api::core::Core;
use async_graphql::Schema;
use std::sync::Arc;

/// The schema type.
pub(crate) type KrakenSchema = Schema<Query, Mutation, SubscriptionRoot>;

pub(crate) fn schema(core: &Arc<Core>) -> KrakenSchema {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .data(Arc::clone(core))
        .limit_depth(core.config.max_depth)
        .limit_complexity(core.config.max_complexity)
        .finish()
}

/// The schema in GraphQL SDL (for documentation and client code generation).
pub fn sdl() -> String {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .finish()
        .sdl()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_keeps_the_original_names() {
        let sdl = sdl();
        for name in [
            "getDeployment(deploymentId: String!): Deployment!",
            "getDeployments: [Deployment!]!",
            "getNode(nodeId: String!): Node!",
            "getNodes: [Node!]!",
            "getPlatform: Platform!",
            "getAvailableLogs: [String!]!",
            "getPlatformServices: [PlatformService!]!",
            "createDeployment(deploymentUrl: String!, gitBranch: String!): String!",
            "pollRedeploy(deploymentId: String!): Boolean!",
            "cancelDeployment(deploymentId: String!): Boolean!",
            "deleteLog(logId: String!): Boolean!",
            "drainNode(nodeId: String!): Boolean!",
            "draining: Boolean!",
            "deploymentChanged(deploymentId: String): Deployment!",
            "loadAvg5: Float!",
            "statusHistory: [StatusChange!]!",
        ] {
            assert!(sdl.contains(name), "{name} missing from:\n{sdl}");
        }
    }
}
