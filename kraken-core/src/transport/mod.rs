//! Moving messages between nodes: the object-safe [`Transport`] trait, typed helpers on top
//! of it ([`TransportExt`]), and the backends.
//!
//! - [`memory`]: one in-process broker shared by every node of a process (always built).
//! - `amqp`: RabbitMQ through lapin (feature `amqp`).
//!
//! Delivery is at least once: a subscriber acknowledges a [`Delivery`] after it handled it;
//! a delivery dropped or nacked with requeue is delivered again, possibly to another
//! subscriber. Handlers must therefore be idempotent (the envelope's message id and the
//! deployment generation make that easy).

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;
pub mod memory;

use crate::wire::{self, Channel, ChannelSpec, Envelope, Message, WireError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// What can go wrong moving messages.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport was closed (shutdown); nothing more will flow.
    #[error("transport closed")]
    Closed,
    /// A bounded queue is full; the publisher should retry later.
    #[error("channel {channel} is full ({capacity} messages)")]
    Full {
        /// The channel.
        channel: String,
        /// Its capacity.
        capacity: usize,
    },
    /// The broker could not be reached or refused the operation.
    #[error("broker error on channel {channel}: {reason}")]
    Broker {
        /// The channel.
        channel: String,
        /// What the broker said.
        reason: String,
    },
    /// The broker did not answer in time.
    #[error("timed out after {after:?} on channel {channel}")]
    Timeout {
        /// The channel.
        channel: String,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// A message could not be encoded.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Settles one delivery. Implemented by each backend.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message was handled: forget it.
    async fn ack(&mut self) -> Result<(), TransportError>;
    /// The message was not handled: deliver it again (`requeue`) or drop / dead-letter it.
    async fn nack(&mut self, requeue: bool) -> Result<(), TransportError>;
}

/// One message received from a channel, to be settled with [`ack`](Delivery::ack) or
/// [`nack`](Delivery::nack). A delivery dropped unsettled is delivered again.
pub struct Delivery {
    /// The encoded message.
    pub payload: Bytes,
    /// Whether this message was delivered before (and not acknowledged).
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.payload.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(payload: Bytes, redelivered: bool, acker: Box<dyn Acker>) -> Self {
        Delivery {
            payload,
            redelivered,
            acker,
        }
    }
    /// Acknowledges: the message was handled.
    pub async fn ack(mut self) -> Result<(), TransportError> {
        self.acker.ack().await
    }
    /// Negative acknowledgement: deliver again if `requeue`, else drop (or dead-letter).
    pub async fn nack(mut self, requeue: bool) -> Result<(), TransportError> {
        self.acker.nack(requeue).await
    }
}

/// A stream of deliveries from one channel. Ends when the transport is closed.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
}

impl Subscription {
    /// Wraps a backend's stream.
    pub fn new(stream: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Subscription {
            inner: Box::pin(stream),
        }
    }
    /// The next delivery, or `None` once the transport is closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.inner.next().await
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Moves encoded messages between nodes.
///
/// Object-safe, used as `Arc<dyn Transport>`. Queue channels keep a message until a
/// subscriber acknowledges it; broadcast channels hand each message to every current
/// subscriber.
///
/// ```
/// use kraken_core::async_trait;
/// use bytes::Bytes;
/// use kraken_core::transport::{Acker, Delivery, Subscription, Transport, TransportError};
/// use kraken_core::wire::ChannelSpec;
/// use std::sync::Mutex;
///
/// /// Remembers what was published; nobody ever receives anything.
/// #[derive(Default)]
/// struct Recorder(Mutex<Vec<(String, Bytes)>>);
///
/// #[async_trait]
/// impl Transport for Recorder {
///     fn name(&self) -> &'static str { "recorder" }
///     async fn declare(&self, _: &ChannelSpec) -> Result<(), TransportError> { Ok(()) }
///     async fn publish(&self, ch: &ChannelSpec, payload: Bytes) -> Result<(), TransportError> {
///         self.0.lock().map_err(|_| TransportError::Closed)?.push((ch.name.to_string(), payload));
///         Ok(())
///     }
///     async fn subscribe(&self, _: &ChannelSpec) -> Result<Subscription, TransportError> {
///         Ok(Subscription::new(futures::stream::empty::<Delivery>()))
///     }
/// }
/// # let t: std::sync::Arc<dyn Transport> = std::sync::Arc::new(Recorder::default());
/// # assert_eq!(t.name(), "recorder");
/// ```
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name of the backend, for logs.
    fn name(&self) -> &'static str;

    /// Makes sure the channel exists (idempotent).
    async fn declare(&self, channel: &ChannelSpec) -> Result<(), TransportError>;

    /// Publishes one encoded message; returns once the transport accepted it (for brokers:
    /// once the broker confirmed it). Declares the channel if needed.
    async fn publish(&self, channel: &ChannelSpec, payload: Bytes) -> Result<(), TransportError>;

    /// Starts consuming the channel. Declares the channel if needed.
    async fn subscribe(&self, channel: &ChannelSpec) -> Result<Subscription, TransportError>;

    /// Deletes a queue channel and whatever waits in it (e.g. the work queue of a node that
    /// left). Optional: the default does nothing.
    async fn delete(&self, _channel: &ChannelSpec) -> Result<(), TransportError> {
        Ok(())
    }

    /// The URL other nodes should use to reach the same broker, if there is one.
    fn broker_url(&self) -> Option<String> {
        None
    }
}

/// A decoded message and the delivery that brought it.
#[derive(Debug)]
pub struct Received<M> {
    /// The message.
    pub envelope: Envelope<M>,
    delivery: Delivery,
}

impl<M> Received<M> {
    /// Acknowledges it: handled.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.delivery.ack().await
    }
    /// Acknowledges it, where a failure needs no handling: the message is then delivered
    /// again, and handlers recognise it as a duplicate. The failure is logged.
    pub async fn settle(self) {
        if let Err(err) = self.delivery.ack().await {
            tracing::debug!(cause = %err, "ack failed; the message will be delivered again");
        }
    }
    /// Not handled: deliver again (`requeue`) or drop.
    pub async fn nack(self, requeue: bool) -> Result<(), TransportError> {
        self.delivery.nack(requeue).await
    }
    /// Whether it was delivered before.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }
}

/// A subscription that decodes messages of type `M`. Undecodable messages (garbage, wrong
/// version, too large) are logged, counted and rejected without requeue, and the
/// subscription goes on.
pub struct TypedSubscription<M> {
    channel: String,
    inner: Subscription,
    rejected: Arc<AtomicU64>,
    /// The rejection of an undecodable message, finished before the next one is read.
    rejecting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: Message> TypedSubscription<M> {
    /// The next well-formed message, or `None` once the transport is closed or `stop` is
    /// cancelled (what a consumer task loops on until its node stops).
    pub async fn next_until(
        &mut self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Received<M>> {
        tokio::select! {
            r = self.next() => r,
            () = stop.cancelled() => None,
        }
    }

    /// The next well-formed message, or `None` once the transport is closed.
    pub async fn next(&mut self) -> Option<Received<M>> {
        StreamExt::next(self).await
    }

    /// How many undecodable messages were rejected so far (shared by clones of the counter).
    pub fn rejected(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.rejected)
    }
}

/// Well-formed messages; an undecodable one is counted, logged and rejected (dropped or
/// dead-lettered by the backend), and the stream goes on.
impl<M: Message> Stream for TypedSubscription<M> {
    type Item = Received<M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received<M>>> {
        let this = &mut *self;
        loop {
            if let Some(rejecting) = this.rejecting.as_mut() {
                std::task::ready!(rejecting.as_mut().poll(cx));
                this.rejecting = None;
            }
            let Some(delivery) = std::task::ready!(this.inner.inner.as_mut().poll_next(cx)) else {
                return Poll::Ready(None);
            };
            match wire::decode::<M>(&delivery.payload) {
                Ok(envelope) => return Poll::Ready(Some(Received { envelope, delivery })),
                Err(err) => {
                    this.rejected.fetch_add(1, Ordering::Relaxed);
                    let channel = this.channel.clone();
                    tracing::warn!(channel = %channel, cause = %err, bytes = delivery.payload.len(), "rejected a message that cannot be decoded");
                    this.rejecting = Some(Box::pin(async move {
                        if let Err(err) = delivery.nack(false).await {
                            tracing::warn!(channel = %channel, cause = %err, "could not reject a message");
                        }
                    }));
                }
            }
        }
    }
}

/// Typed helpers on any [`Transport`].
#[async_trait]
pub trait TransportExt {
    /// Encodes and publishes an envelope on a typed channel.
    async fn send<M: Message>(
        &self,
        channel: &Channel<M>,
        envelope: &Envelope<M>,
    ) -> Result<(), TransportError>;
    /// Subscribes to a typed channel.
    async fn listen<M: Message>(
        &self,
        channel: &Channel<M>,
    ) -> Result<TypedSubscription<M>, TransportError>;
}

#[async_trait]
impl<T: Transport + ?Sized> TransportExt for T {
    async fn send<M: Message>(
        &self,
        channel: &Channel<M>,
        envelope: &Envelope<M>,
    ) -> Result<(), TransportError> {
        let bytes = wire::encode(envelope)?;
        self.publish(channel.spec(), bytes).await
    }

    async fn listen<M: Message>(
        &self,
        channel: &Channel<M>,
    ) -> Result<TypedSubscription<M>, TransportError> {
        let inner = self.subscribe(channel.spec()).await?;
        Ok(TypedSubscription {
            channel: channel.name().to_owned(),
            inner,
            rejected: Arc::new(AtomicU64::new(0)),
            rejecting: None,
            _message: std::marker::PhantomData,
        })
    }
}
