//! Live changes, over websocket.

use super::context::{coded, core, parse_deployment, unknown_deployment};
use super::types::{DeploymentObject, LogLineObject};
use crate::api::core::Core;
use crate::model::StatusKind;
use crate::state::StateEvent;
use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

/// Live changes, over websocket.
pub(crate) struct SubscriptionRoot;

/// Holds a stream permit and ends with the server.
fn bounded<S: Stream + Send + 'static>(
    core: &Core,
    permit: OwnedSemaphorePermit,
    stream: S,
) -> impl Stream<Item = S::Item> + use<S> {
    stream
        .map(move |item| {
            let _held = &permit;
            item
        })
        .take_until(core.stop.clone().cancelled_owned())
        .take_until(tokio::time::sleep(core.config.max_stream_time))
}

fn permit(core: &Core) -> Result<OwnedSemaphorePermit> {
    Arc::clone(&core.streams).try_acquire_owned().map_err(|_| {
        coded(
            "RESOURCE_EXHAUSTED",
            format!(
                "too many open streams ({}); try again later",
                core.config.max_streams
            ),
        )
    })
}

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Each status change of one deployment (or of every deployment, without an id). Ends
    /// when that deployment is destroyed.
    async fn deployment_changed(
        &self,
        ctx: &Context<'_>,
        deployment_id: Option<String>,
    ) -> Result<impl Stream<Item = DeploymentObject> + use<>> {
        let core = Arc::clone(core(ctx)?);
        let only = deployment_id.as_deref().map(parse_deployment).transpose()?;
        let permit = permit(&core)?;
        let events = core.db.subscribe();
        // A deployment already destroyed is sent once, as it is; nothing more will happen.
        let mut gone = None;
        if let Some(id) = &only {
            let d = core
                .db
                .deployment(id)
                .ok_or_else(|| unknown_deployment(id))?;
            if d.status.kind() == StatusKind::Destroyed {
                gone = Some(DeploymentObject::new(d));
            }
        }
        let done = gone.is_some();
        let db = Arc::clone(&core.db);
        let rest = futures::stream::unfold((events, done), move |(mut events, done)| {
            let db = Arc::clone(&db);
            let only = only.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match events.recv().await {
                        Ok(StateEvent::Deployment { id, status, .. })
                            if only.as_ref().is_none_or(|o| *o == id) =>
                        {
                            let Some(d) = db.deployment(&id) else {
                                continue;
                            };
                            let last = only.is_some() && status.kind() == StatusKind::Destroyed;
                            return Some((
                                DeploymentObject::with_status(d, status),
                                (events, last),
                            ));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "a deployment subscriber fell behind");
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(bounded(
            &core,
            permit,
            futures::stream::iter(gone).chain(rest),
        ))
    }

    /// New lines of a deployment's log (after the newest `tail` kept ones, default none).
    /// Ends when the deployment is destroyed.
    async fn log_lines(
        &self,
        ctx: &Context<'_>,
        deployment_id: String,
        #[graphql(default = 0)] tail: usize,
    ) -> Result<impl Stream<Item = LogLineObject> + use<>> {
        let core = Arc::clone(core(ctx)?);
        let id = parse_deployment(&deployment_id)?;
        let permit = permit(&core)?;
        let (head, events) = core
            .db
            .logs_and_subscribe(&id, Some(tail))
            .ok_or_else(|| unknown_deployment(&id))?;
        let head = futures::stream::iter(head);
        // Nothing more comes for a deployment already destroyed (or of which only a log is left).
        let gone = core
            .db
            .deployment(&id)
            .is_none_or(|d| d.status.kind() == StatusKind::Destroyed);
        let rest = futures::stream::unfold((events, id, gone), |(mut events, id, gone)| async move {
            if gone {
                return None;
            }
            loop {
                match events.recv().await {
                    Ok(StateEvent::Log { id: of, lines }) if of == id => {
                        return Some((lines, (events, id, false)));
                    }
                    Ok(StateEvent::Deployment { id: of, status, .. })
                        if of == id && status.kind() == StatusKind::Destroyed =>
                    {
                        return None;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(deployment = %id, missed, "a log subscriber fell behind");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(bounded(&core, permit, head.chain(rest).map(LogLineObject)))
    }
}
