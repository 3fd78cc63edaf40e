//! Subscriptions: one task per subscription consumes on its own AMQP channel and feeds a
//! bounded buffer that the [`Subscription`] stream reads. When the consumer ends for any
//! reason but a deliberate stop (connection lost, consumer cancelled by the broker, queue
//! deleted elsewhere) the task subscribes again on the next session, so the stream keeps
//! going across reconnects.

use super::connection::{Backoff, Failure, Session, Shared, short};
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};

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
    let buffer = usize::from(shared.config.prefetch_count());
    let (tx, rx) = mpsc::channel(buffer);
    let (ready_tx, ready_rx) = oneshot::channel();
    let handle = shared.register_subscription(&spec.name);
    let stop = handle.stop.clone();
    let after = shared.config.publish_timeout;
    let channel = spec.name.to_string();
    let task = Consume {
        shared,
        _keep_alive: keep_alive,
        spec,
        tx,
        stop: stop.clone(),
        _finished: handle.finished.drop_guard(),
        ready: Some(ready_tx),
        broadcast_counts: HashMap::new(),
    };
    tokio::spawn(task.run());
    match tokio::time::timeout(after, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(Subscription::new(ReceiverStream::new(rx))),
        Ok(Ok(Err(err))) => Err(err),
        // The task ended without a word: the transport shut down.
        Ok(Err(_)) => Err(TransportError::Closed),
        Err(_) => {
            stop.cancel();
            Err(TransportError::Timeout { channel, after })
        }
    }
}

/// How a consumer ended.
enum Ended {
    /// Deliberately: close, delete, or the subscription was dropped.
    Stopped,
    /// Anything else: subscribe again.
    Interrupted(Failure),
}

/// Most payload fingerprints remembered per broadcast subscription to count redeliveries.
const BROADCAST_COUNTS: usize = 1024;

struct Consume {
    shared: Arc<Shared>,
    _keep_alive: Arc<ShutdownOnDrop>,
    spec: ChannelSpec,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    /// Tells `delete` that the consumer is gone, when the task ends.
    _finished: DropGuard,
    /// Told once the first consumer is registered (or could not be).
    ready: Option<oneshot::Sender<Result<(), TransportError>>>,
    /// Broadcast queues are classic queues without a broker-side delivery count: count
    /// redeliveries of a payload here (bounded, cleared when full).
    broadcast_counts: HashMap<u64, u32>,
}

impl Consume {
    async fn run(mut self) {
        let mut backoff = Backoff::new(
            self.shared.config.reconnect_min,
            self.shared.config.reconnect_max,
        );
        loop {
            let session = tokio::select! {
                session = self.shared.current_session() => match session {
                    Ok(session) => session,
                    Err(_) => return,
                },
                () = self.stop.cancelled() => return,
                () = self.tx.closed() => return,
            };
            let started = Instant::now();
            match self.consume_on(&session).await {
                Ended::Stopped => return,
                Ended::Interrupted(failure) => {
                    if let Failure::Refused { .. } | Failure::Invalid(_) = failure
                        && let Some(ready) = self.ready.take()
                    {
                        // The very first attempt was refused: tell `subscribe`, not a log.
                        let _ = ready.send(Err(failure.into_error(&self.spec.name)));
                        return;
                    }
                    session.check();
                    if self.ready.is_none() {
                        tracing::warn!(channel = %self.spec, generation = session.generation, cause = %failure.reason(), "consumer interrupted; subscribing again");
                    }
                    if started.elapsed() > self.shared.config.reconnect_max {
                        backoff.reset();
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = self.stop.cancelled() => return,
                        () = self.tx.closed() => return,
                    }
                }
            }
        }
    }

    /// Consumes on one session until it ends.
    async fn consume_on(&mut self, session: &Session) -> Ended {
        let (channel, mut consumer) = match self.start(session).await {
            Ok(started) => started,
            Err(failure) => return Ended::Interrupted(failure),
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
        }
        tracing::debug!(channel = %self.spec, generation = session.generation, "consuming");
        let context = Arc::new(Context {
            channel: channel.clone(),
            name: self.spec.name.to_string(),
            limit: self.shared.config.delivery_limit(),
            runtime: self.shared.runtime.clone(),
        });
        // Registered once, not per message: this loop is the hot path of every delivery.
        let stop = self.stop.clone();
        let tx = self.tx.clone();
        let stopped = async {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tx.closed() => {}
            }
        };
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stopped => break,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return Ended::Interrupted(session.failure(err)),
                None => {
                    return Ended::Interrupted(Failure::Transient(
                        "the broker cancelled the consumer".to_owned(),
                    ));
                }
            };
            let delivery = self.wrap(delivery, &context);
            let sent = match self.tx.try_send(delivery) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(delivery)) => tokio::select! {
                    sent = self.tx.send(delivery) => sent.map_err(drop),
                    () = &mut stopped => Err(()),
                },
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            };
            if sent.is_err() {
                break;
            }
        }
        cancel(&channel, consumer, &self.spec).await;
        Ended::Stopped
    }

    /// Opens a channel, declares what the channel needs and registers a consumer.
    async fn start(&mut self, session: &Session) -> Result<(Channel, Consumer), Failure> {
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
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| session.failure(err))?;
        Ok((channel, consumer))
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
