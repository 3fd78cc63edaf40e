//! Subscriptions: each [`Subscription`] consumes on its own AMQP channel, reading lapin's
//! consumer directly. When the consumer ends for any reason but a deliberate stop
//! (connection lost, consumer cancelled by the broker, queue deleted elsewhere) the stream
//! subscribes again on the next session, so it keeps going across reconnects; it ends on
//! close, on `delete` of its channel, or when dropped.

use super::connection::{Backoff, Failure, Session, Shared, SubscriptionControl, lock, short};
use crate::transport::{Acker, Delivery, Subscription, TransportError};
use crate::wire::{ChannelKind, ChannelSpec};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Consumer};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Keeps the transport alive while a subscription runs; dropping the last one shuts the
/// transport down.
pub(super) struct ShutdownOnDrop(pub CancellationToken);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Starts consuming `spec`; returns once the consumer is registered with the broker, so
/// that a message published after `subscribe` returned reaches it (which matters for
/// broadcast channels). Waits for a reconnect if need be, at most `publish_timeout`.
pub(super) async fn subscribe(
    shared: Arc<Shared>,
    keep_alive: Arc<ShutdownOnDrop>,
    spec: ChannelSpec,
) -> Result<Subscription, TransportError> {
    let control = shared.register_subscription(&spec.name);
    let stopped = Box::pin(control.stop.clone().cancelled_owned());
    let backoff = Backoff::new(shared.config.reconnect_min, shared.config.reconnect_max);
    let mut consume = Consume {
        shared,
        _keep_alive: keep_alive,
        spec,
        control,
        stopped,
        active: None,
        backoff,
        broadcast_counts: HashMap::new(),
    };
    let after = consume.shared.config.publish_timeout;
    match tokio::time::timeout(after, consume.first_start()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(err),
        Err(_) => {
            return Err(TransportError::Timeout {
                channel: consume.spec.name.to_string(),
                after,
            });
        }
    }
    let stream = futures::stream::unfold(consume, |mut consume| async move {
        let delivery = consume.next_delivery().await?;
        Some((delivery, consume))
    });
    Ok(Subscription::new(stream))
}

/// Most payload fingerprints remembered per broadcast subscription to count redeliveries.
const BROADCAST_COUNTS: usize = 1024;

/// A registered consumer.
struct Active {
    /// The session it lives on, to classify its errors.
    session: Arc<Session>,
    consumer: Consumer,
    context: Arc<Context>,
    /// When it started, to reset the backoff after a stable period.
    started: Instant,
}

/// The state behind one [`Subscription`]. It reads lapin's consumer directly, in the task
/// that polls the subscription: no task or buffer in between, and the broker sends at most
/// `prefetch` unacknowledged deliveries.
struct Consume {
    shared: Arc<Shared>,
    _keep_alive: Arc<ShutdownOnDrop>,
    spec: ChannelSpec,
    control: Arc<SubscriptionControl>,
    /// Completes when the subscription is stopped (close, delete); registered once.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    active: Option<Active>,
    backoff: Backoff,
    /// Broadcast queues are classic queues without a broker-side delivery count: count
    /// redeliveries of a payload here (bounded, cleared when full).
    broadcast_counts: HashMap<u64, u32>,
}

/// What one wait on the consumer gave.
// Lives on the stack for one match, moved straight into a `Delivery`: boxing it would cost
// an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    Delivery(lapin::message::Delivery),
    Ended(Failure),
    Stopped,
}

impl Consume {
    /// Registers the first consumer, retrying transient failures; a refusal is an error.
    async fn first_start(&mut self) -> Result<(), TransportError> {
        loop {
            let session = self.shared.current_session().await?;
            match self.start(&session).await {
                Ok(active) => {
                    self.active = Some(active);
                    return Ok(());
                }
                Err(Failure::Transient(reason)) => {
                    tracing::debug!(channel = %self.spec, cause = %reason, "subscribing failed; retrying");
                    session.check();
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                Err(refused) => return Err(refused.into_error(&self.spec.name)),
            }
        }
    }

    /// The next delivery; `None` once the subscription is stopped or the transport closed.
    async fn next_delivery(&mut self) -> Option<Delivery> {
        loop {
            if self.control.stop.is_cancelled() {
                self.finish();
                return None;
            }
            let Some(active) = self.active.as_mut() else {
                let session = tokio::select! {
                    biased;
                    () = self.stopped.as_mut() => None,
                    session = self.shared.current_session() => session.ok(),
                };
                let Some(session) = session else {
                    self.finish();
                    return None;
                };
                match self.start(&session).await {
                    Ok(active) => {
                        tracing::info!(channel = %self.spec, generation = session.generation, "consuming again");
                        self.active = Some(active);
                    }
                    Err(failure) => {
                        if !self.pause_after(&session, &failure, None).await {
                            self.finish();
                            return None;
                        }
                    }
                }
                continue;
            };
            let next = tokio::select! {
                biased;
                () = self.stopped.as_mut() => Next::Stopped,
                next = active.consumer.next() => match next {
                    Some(Ok(delivery)) => Next::Delivery(delivery),
                    Some(Err(err)) => Next::Ended(active.session.failure(err)),
                    None => Next::Ended(Failure::Transient(
                        "the broker cancelled the consumer".to_owned(),
                    )),
                },
            };
            match next {
                Next::Delivery(delivery) => {
                    let context = Arc::clone(&active.context);
                    return Some(self.wrap(delivery, &context));
                }
                Next::Stopped => {
                    self.finish();
                    return None;
                }
                Next::Ended(failure) => {
                    let Some(ended) = self.active.take() else {
                        continue;
                    };
                    lock(&self.control.active).take();
                    let (session, started) = (Arc::clone(&ended.session), ended.started);
                    drop(ended);
                    if !self.pause_after(&session, &failure, Some(started)).await {
                        self.finish();
                        return None;
                    }
                }
            }
        }
    }

    /// Logs an interruption and waits before subscribing again; `false` if stopped
    /// meanwhile.
    async fn pause_after(
        &mut self,
        session: &Session,
        failure: &Failure,
        started: Option<Instant>,
    ) -> bool {
        session.check();
        tracing::warn!(channel = %self.spec, generation = session.generation, cause = %failure.reason(), "consumer interrupted; subscribing again");
        if started.is_some_and(|at| at.elapsed() > self.shared.config.reconnect_max) {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        tokio::select! {
            biased;
            () = self.stopped.as_mut() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Ends the consumer: cancels it (unless `delete` already does) and gives back what it
    /// prefetched, in the background.
    fn finish(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let ours = lock(&self.control.active).take();
        if let Some((channel, _)) = ours
            && channel.status().connected()
        {
            let spec = self.spec.clone();
            self.shared.runtime.spawn(async move {
                cancel(&channel, active.consumer, &spec).await;
            });
        }
    }

    /// Opens a channel, declares what the channel needs and registers a consumer.
    async fn start(&mut self, session: &Arc<Session>) -> Result<Active, Failure> {
        let shared = &self.shared;
        let channel = session.open_channel().await?;
        channel
            .basic_qos(shared.config.prefetch_count(), BasicQosOptions::default())
            .await
            .map_err(|err| session.failure(err))?;
        let queue = match self.spec.kind {
            ChannelKind::Queue => {
                session.declare(shared, &self.spec, true).await?;
                shared
                    .entity_name(&self.spec)
                    .map_err(|err| Failure::Invalid(err.to_string()))?
            }
            ChannelKind::Broadcast => {
                session.declare(shared, &self.spec, true).await?;
                let exchange = shared
                    .entity_name(&self.spec)
                    .map_err(|err| Failure::Invalid(err.to_string()))?;
                // A private queue per subscriber, gone with its connection.
                let options = QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                };
                let queue = channel
                    .queue_declare(ShortString::from(""), options, FieldTable::default())
                    .await
                    .map_err(|err| session.failure(err))?;
                let queue = queue.name().clone();
                channel
                    .queue_bind(
                        queue.clone(),
                        exchange,
                        ShortString::from(""),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|err| session.failure(err))?;
                queue
            }
        };
        let tag = short(
            format!("kraken-{}", uuid::Uuid::new_v4().simple()),
            &self.spec.name,
        )
        .map_err(|err| Failure::Invalid(err.to_string()))?;
        let consumer = channel
            .basic_consume(
                queue,
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| session.failure(err))?;
        *lock(&self.control.active) = Some((channel.clone(), tag));
        tracing::debug!(channel = %self.spec, generation = session.generation, "consuming");
        let context = Arc::new(Context {
            channel,
            name: self.spec.name.to_string(),
            limit: shared.config.delivery_limit(),
            runtime: shared.runtime.clone(),
        });
        Ok(Active {
            session: Arc::clone(session),
            consumer,
            context,
            started: Instant::now(),
        })
    }

    fn wrap(&mut self, delivery: lapin::message::Delivery, context: &Arc<Context>) -> Delivery {
        let number = match self.spec.kind {
            ChannelKind::Queue => delivery_count(delivery.properties.headers()).saturating_add(1),
            ChannelKind::Broadcast => self.broadcast_number(&delivery),
        };
        let lapin::message::Delivery {
            data,
            redelivered,
            acker,
            ..
        } = delivery;
        let acker = AmqpAcker {
            pending: Some(Pending {
                acker,
                number,
                context: Arc::clone(context),
            }),
        };
        Delivery::new(Bytes::from(data), redelivered, Box::new(acker))
    }

    fn broadcast_number(&mut self, delivery: &lapin::message::Delivery) -> u32 {
        let mut hasher = DefaultHasher::new();
        delivery.data.hash(&mut hasher);
        let key = hasher.finish();
        if !delivery.redelivered {
            self.broadcast_counts.remove(&key);
            return 1;
        }
        if self.broadcast_counts.len() >= BROADCAST_COUNTS {
            self.broadcast_counts.clear();
        }
        let count = self.broadcast_counts.entry(key).or_insert(1);
        *count = count.saturating_add(1);
        *count
    }
}

impl Drop for Consume {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Cancels a consumer and gives back what it had prefetched but not handed out, so those
/// messages go to other consumers now rather than when the channel closes (which waits
/// for the deliveries handed out to be settled).
async fn cancel(channel: &Channel, mut consumer: Consumer, spec: &ChannelSpec) {
    let cancel_and_drain = async {
        let cancelled = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        if let Err(err) = cancelled {
            tracing::debug!(channel = %spec, cause = %err, "could not cancel a consumer");
            return;
        }
        while let Some(Ok(delivery)) = consumer.next().await {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(err) = delivery.acker.nack(requeue).await {
                tracing::debug!(channel = %spec, cause = %err, "could not return a prefetched message");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), cancel_and_drain)
        .await
        .is_err()
    {
        tracing::debug!(channel = %spec, "cancelling a consumer took too long");
    }
}

/// The broker's count of earlier deliveries (`x-delivery-count`, set by quorum queues on
/// redelivery).
fn delivery_count(headers: &Option<FieldTable>) -> u32 {
    let Some(value) = headers
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
    else {
        return 0;
    };
    let count: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// What every delivery of one consumer shares.
struct Context {
    /// The consumer's channel: held until every delivery is settled, since closing it
    /// would make their acknowledgements fail.
    channel: Channel,
    /// The Kraken channel name, for logs and errors.
    name: String,
    /// The poison limit.
    limit: u32,
    /// For settling deliveries dropped unsettled.
    runtime: tokio::runtime::Handle,
}

struct Pending {
    acker: lapin::Acker,
    /// Which delivery of this message this is (1 = first).
    number: u32,
    context: Arc<Context>,
}

impl Pending {
    async fn ack(self) -> Result<(), TransportError> {
        let result = self.acker.ack(BasicAckOptions::default()).await;
        self.settled(result)
    }

    async fn nack(self, requeue: bool) -> Result<(), TransportError> {
        let requeue = if requeue && self.number >= self.context.limit {
            tracing::warn!(
                channel = %self.context.name,
                deliveries = self.number,
                limit = self.context.limit,
                "message dead-lettered after too many deliveries"
            );
            false
        } else {
            requeue
        };
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        let result = self.acker.nack(options).await;
        self.settled(result)
    }

    fn settled(&self, result: Result<bool, lapin::Error>) -> Result<(), TransportError> {
        match result {
            Ok(true) => Ok(()),
            // Poisoned: the channel (or its connection) is gone, the broker gives the
            // message to a consumer again. Receivers de-duplicate by message id.
            Ok(false) => Err(TransportError::Broker {
                channel: self.context.name.clone(),
                reason: "the connection that delivered this message was lost; it will be delivered again".to_owned(),
            }),
            Err(err) => Err(TransportError::Broker {
                channel: self.context.name.clone(),
                reason: err.to_string(),
            }),
        }
    }
}

/// Settles one AMQP delivery; a delivery dropped unsettled is given back (requeued, or
/// dead-lettered at the poison limit).
struct AmqpAcker {
    pending: Option<Pending>,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&mut self) -> Result<(), TransportError> {
        match self.pending.take() {
            Some(pending) => pending.ack().await,
            None => Ok(()),
        }
    }

    async fn nack(&mut self, requeue: bool) -> Result<(), TransportError> {
        match self.pending.take() {
            Some(pending) => pending.nack(requeue).await,
            None => Ok(()),
        }
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if !pending.acker.usable() || !pending.context.channel.status().connected() {
            // The broker already took the message back with the channel.
            return;
        }
        let runtime = pending.context.runtime.clone();
        runtime.spawn(async move {
            let name = pending.context.name.clone();
            if let Err(err) = pending.nack(true).await {
                tracing::debug!(channel = %name, cause = %err, "could not give back a dropped delivery");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_reads_any_integer() {
        assert_eq!(delivery_count(&None), 0);
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(&Some(headers)), 3);
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(-2));
        assert_eq!(delivery_count(&Some(headers)), 0);
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongString("x".into()));
        assert_eq!(delivery_count(&Some(headers)), 0);
    }
}
