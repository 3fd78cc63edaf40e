//! RabbitMQ through lapin (feature `amqp`): nodes on several machines, at-least-once
//! delivery that survives a broker restart.
//!
//! # Layout
//!
//! - [`AmqpConfig`] (`config`): URL, name prefix, prefetch, poison limit, timeouts, backoff.
//! - `connection`: the connection, its supervisor (reconnect with backoff and jitter,
//!   declare again) and the topology: queue arguments, dead letters.
//! - `consume`: the [`Subscription`] stream (which reads lapin's consumer directly and
//!   subscribes again after an interruption) and the acknowledgement of deliveries.
//!
//! # Topology
//!
//! | Kraken channel | RabbitMQ |
//! |---|---|
//! | queue channel `name` | durable **quorum** queue `<prefix>.<name>`, reached through the default exchange; messages are persistent (delivery mode 2) |
//! | broadcast channel `name` | durable fanout exchange `<prefix>.<name>`; each subscriber binds its own exclusive, auto-delete, server-named queue |
//! | dead letters | fanout exchange and quorum queue `<prefix>.dead`, bounded by [`AmqpConfig::dead_letter_limit`] (so no channel may be called `dead`) |
//!
//! # Guarantees
//!
//! - `publish` returns once the broker confirmed the message (publisher confirms); a
//!   broker nack is an error. While the connection is down it waits for the reconnect and
//!   publishes then, up to [`AmqpConfig::publish_timeout`]; only then does it fail with
//!   [`TransportError::Timeout`]. A publish whose confirm was lost with the connection is
//!   sent again: the receiver may see it twice.
//! - Queue channels are **at least once**: a delivery is acknowledged by its handler; one
//!   dropped unsettled or nacked with requeue is delivered again, with
//!   [`Delivery::redelivered`](super::Delivery::redelivered) set. Deliveries of a lost connection cannot be acknowledged
//!   any more (`ack` returns an error, nothing else happens): the broker delivers them
//!   again. **Receivers de-duplicate by the envelope's message id.**
//! - Broadcast channels are **lossy**: a subscriber gets what is published while it is
//!   connected; during a reconnect it misses messages. They carry announcements that are
//!   repeated.
//! - Poison messages: quorum queues count deliveries (`x-delivery-count`). A message nacked
//!   with requeue at its [`AmqpConfig::max_deliveries`]th delivery is dead-lettered to
//!   `<prefix>.dead` instead, with a warning in the log. The queue also carries
//!   `x-delivery-limit = max_deliveries - 1`, so a message whose consumers keep dying
//!   (nobody nacks it) is dead-lettered by the broker after as many deliveries. A queue
//!   keeps the arguments it was first declared with: a node configured otherwise logs a
//!   warning and uses the queue as it is.
//!
//! Why quorum queues rather than classic queues with a counter header: the broker keeps
//! the count, so it survives consumer crashes and reconnects, needs no re-publishing (which
//! would reorder messages and race with the acknowledgement), and the queue is replicated
//! when the broker is a cluster.
//!
//! # Reconnecting
//!
//! A supervisor task watches the connection (lapin's error events, a periodic check, and
//! failures reported by publishers and consumers). When it is lost, publishers wait, the
//! supervisor reconnects with exponential backoff and jitter
//! ([`AmqpConfig::reconnect_min`] to [`AmqpConfig::reconnect_max`]), declares the
//! dead-letter topology and every channel declared so far, and publishing resumes; each
//! subscription then registers its consumer again. A [`Subscription`] ends only when the
//! transport is closed, its channel deleted through this transport, or it is dropped.
//! lapin's own auto-recovery is not used: a reconnect made here is observable and
//! bounded, and a server-named broadcast queue is simply declared anew.
//!
//! # Broker URL
//!
//! [`Transport::broker_url`] answers [`AmqpConfig::advertise_url`] when set; otherwise the
//! connection URL without its password, unless that is RabbitMQ's default `guest:guest`
//! (which carries no secret). Platform info is readable by anyone who reaches the API, so
//! handing credentials to joining workers is a deliberate choice: set `advertise_url`.

mod config;
mod connection;
mod consume;

pub use config::{AmqpConfig, DEFAULT_URL};

use super::{Subscription, Transport, TransportError};
use crate::wire::{ChannelKind, ChannelSpec};
use async_trait::async_trait;
use bytes::Bytes;
use connection::{Backoff, Failure, Session, Shared};
use consume::ShutdownOnDrop;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A [`Transport`] over RabbitMQ. Cheap to clone; clones share one connection. Dropping
/// the last clone (and the last subscription) closes the connection.
///
/// ```no_run
/// use kraken_core::transport::amqp::{AmqpConfig, AmqpTransport};
/// use kraken_core::transport::Transport;
/// use kraken_core::wire::{ChannelKind, ChannelSpec};
///
/// # async fn demo() -> Result<(), kraken_core::transport::TransportError> {
/// let transport = AmqpTransport::connect(AmqpConfig::default()).await?;
/// let work = ChannelSpec { name: "work.n1".into(), kind: ChannelKind::Queue };
/// let mut subscription = transport.subscribe(&work).await?;
/// transport.publish(&work, "hello".into()).await?;
/// if let Some(delivery) = subscription.next().await {
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
    keep_alive: Arc<ShutdownOnDrop>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.shared.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl AmqpTransport {
    /// Connects to the broker and declares the dead-letter topology. Fails if the broker
    /// cannot be reached within [`AmqpConfig::connect_timeout`]; once connected, later
    /// connection losses are repaired in the background.
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        let shared = Shared::start(config).await?;
        let keep_alive = Arc::new(ShutdownOnDrop(shared.shutdown.clone()));
        Ok(AmqpTransport { shared, keep_alive })
    }

    /// Closes the transport: subscriptions end, publishes fail with
    /// [`TransportError::Closed`], the connection is closed.
    pub fn close(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether the connection to the broker is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected()
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// Name of the queue (and exchange) dead letters go to.
    pub fn dead_letter_queue(&self) -> String {
        self.shared.dead_letter_name()
    }

    /// Number of messages waiting in the dead-letter queue.
    pub async fn dead_letter_count(&self) -> Result<u32, TransportError> {
        let channel = self.dead_letter_queue();
        self.retrying(&channel, |session| async move {
            session.dead_letter_count(&self.shared).await
        })
        .await
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.shared.shutdown.is_cancelled() {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `operation` on the current session until it succeeds, is refused, or
    /// `publish_timeout` passes; transient failures (reconnects) are retried.
    async fn retrying<'a, T, F, Fut>(
        &'a self,
        channel: &str,
        operation: F,
    ) -> Result<T, TransportError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, Failure>> + 'a,
    {
        self.check_open()?;
        let after = self.shared.config.publish_timeout;
        let mut last_failure = None;
        let attempts = async {
            let mut backoff = retry_backoff();
            loop {
                let session = self.shared.current_session().await?;
                match operation(Arc::clone(&session)).await {
                    Ok(value) => return Ok(value),
                    Err(Failure::Transient(reason)) => {
                        session.check();
                        last_failure = Some(reason);
                    }
                    Err(refused) => return Err(refused.into_error(channel)),
                }
                self.pause(&mut backoff).await?;
            }
        };
        match tokio::time::timeout(after, attempts).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    channel,
                    ?after,
                    last_failure = last_failure
                        .as_deref()
                        .unwrap_or("waiting for the broker connection"),
                    "broker operation timed out"
                );
                Err(TransportError::Timeout {
                    channel: channel.to_owned(),
                    after,
                })
            }
        }
    }

    async fn pause(&self, backoff: &mut Backoff) -> Result<(), TransportError> {
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => Ok(()),
            () = self.shared.shutdown.cancelled() => Err(TransportError::Closed),
        }
    }

    /// One publish attempt on `session`.
    async fn publish_once(
        &self,
        session: &Session,
        spec: &ChannelSpec,
        target: &Target,
        payload: &[u8],
    ) -> Result<(), Attempt> {
        session
            .declare(&self.shared, spec, false)
            .await
            .map_err(|failure| match failure {
                Failure::Transient(reason) => Attempt::Retry(reason),
                refused => Attempt::Fail(refused.into_error(&spec.name)),
            })?;
        let channel = session
            .publisher()
            .await
            .map_err(|failure| Attempt::Retry(failure.reason().to_owned()))?;
        let published = channel
            .basic_publish(
                target.exchange.clone(),
                target.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: target.mandatory,
                    immediate: false,
                },
                payload,
                target.properties.clone(),
            )
            .await;
        let confirmed = match published {
            Ok(confirm) => confirm.await,
            Err(err) => Err(err),
        };
        match confirmed {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                // Unroutable: the queue vanished (deleted elsewhere, or a broker that lost
                // its data). Declare it again and retry.
                session.undeclared(spec);
                Err(Attempt::Retry(format!(
                    "message returned by the broker: {}",
                    returned.reply_text
                )))
            }
            Ok(Confirmation::Nack(_)) => Err(Attempt::Fail(TransportError::Broker {
                channel: spec.name.to_string(),
                reason: "the broker refused the message (nack)".to_owned(),
            })),
            Err(err) => {
                let failure = session.failure(err);
                if let Failure::Refused { .. } = failure {
                    // e.g. 404: the exchange was deleted; the channel is closed now.
                    session.undeclared(spec);
                }
                session.publisher_failed(&channel);
                Err(Attempt::Retry(failure.reason().to_owned()))
            }
        }
    }
}

/// Where a channel's messages are published.
struct Target {
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    properties: BasicProperties,
}

impl Target {
    fn new(name: ShortString, kind: ChannelKind) -> Self {
        match kind {
            // Through the default exchange; mandatory, so a missing queue comes back
            // instead of the message vanishing.
            ChannelKind::Queue => Target {
                exchange: ShortString::from(""),
                routing_key: name,
                mandatory: true,
                properties: BasicProperties::default().with_delivery_mode(2),
            },
            // Nobody listening, nobody gets it: not mandatory, not persistent.
            ChannelKind::Broadcast => Target {
                exchange: name,
                routing_key: ShortString::from(""),
                mandatory: false,
                properties: BasicProperties::default().with_delivery_mode(1),
            },
        }
    }
}

/// The outcome of one failed publish attempt.
enum Attempt {
    Retry(String),
    Fail(TransportError),
}

/// Pause between retries of one operation on a live connection.
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    async fn declare(&self, channel: &ChannelSpec) -> Result<(), TransportError> {
        self.retrying(&channel.name, |session| async move {
            session.declare(&self.shared, channel, true).await
        })
        .await
    }

    async fn publish(&self, channel: &ChannelSpec, payload: Bytes) -> Result<(), TransportError> {
        self.check_open()?;
        let target = Target::new(self.shared.entity_name(channel)?, channel.kind);
        let after = self.shared.config.publish_timeout;
        let mut last_failure = None;
        let attempts = async {
            let mut backoff = retry_backoff();
            loop {
                let session = self.shared.current_session().await?;
                match self
                    .publish_once(&session, channel, &target, &payload)
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(Attempt::Fail(err)) => return Err(err),
                    Err(Attempt::Retry(reason)) => {
                        tracing::debug!(channel = %channel, generation = session.generation, cause = %reason, "publish failed; retrying");
                        session.check();
                        last_failure = Some(reason);
                    }
                }
                self.pause(&mut backoff).await?;
            }
        };
        match tokio::time::timeout(after, attempts).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(channel = %channel, ?after, last_failure = last_failure.as_deref().unwrap_or("waiting for the broker connection"), "publish timed out");
                Err(TransportError::Timeout {
                    channel: channel.name.to_string(),
                    after,
                })
            }
        }
    }

    async fn subscribe(&self, channel: &ChannelSpec) -> Result<Subscription, TransportError> {
        self.check_open()?;
        self.shared.entity_name(channel)?;
        let subscription = consume::subscribe(
            Arc::clone(&self.shared),
            Arc::clone(&self.keep_alive),
            channel.clone(),
        )
        .await?;
        Ok(subscription)
    }

    /// Ends this transport's subscriptions of a queue channel and deletes its queue with
    /// what waits in it. Subscribers on other connections see their consumer cancelled and
    /// subscribe again (which declares an empty queue). A broadcast channel has no queue
    /// of its own (nothing waits in an exchange): deleting one changes nothing.
    async fn delete(&self, channel: &ChannelSpec) -> Result<(), TransportError> {
        self.check_open()?;
        if channel.kind == ChannelKind::Broadcast {
            return Ok(());
        }
        // Cancel our consumers before the queue goes: RabbitMQ may answer a consumer
        // cancelled while its queue is being deleted twice, which lapin takes for a
        // protocol error and closes the whole connection.
        self.shared.stop_subscriptions(&channel.name).await;
        self.shared.forget(channel);
        self.retrying(&channel.name, |session| async move {
            session.delete_queue(&self.shared, channel).await
        })
        .await
    }

    fn broker_url(&self) -> Option<String> {
        Some(self.shared.config.advertised())
    }
}
