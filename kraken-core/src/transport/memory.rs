//! An in-process broker: every node of one process shares a [`MemoryBroker`] and talks
//! through its own [`MemoryTransport`] handle.
//!
//! It keeps the semantics the broker backends have: queue channels hold messages until a
//! subscriber acknowledges them, unsettled deliveries are delivered again, a message
//! rejected too often is dead-lettered, and every queue is bounded.

use super::{Acker, Delivery, Subscription, Transport, TransportError};
use crate::util::lock;
use crate::wire::{ChannelKind, ChannelSpec};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Limits of a [`MemoryBroker`].
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Most messages waiting in one queue; publishing more fails with
    /// [`TransportError::Full`].
    pub queue_capacity: usize,
    /// Deliveries of one message before it is dead-lettered instead of requeued.
    pub max_deliveries: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            queue_capacity: 100_000,
            max_deliveries: 10,
        }
    }
}

struct Item {
    payload: Bytes,
    deliveries: u32,
}

struct Queue {
    name: String,
    items: Mutex<VecDeque<Item>>,
    notify: Notify,
    deleted: CancellationToken,
}

impl Queue {
    fn new(name: String) -> Arc<Self> {
        Arc::new(Queue {
            name,
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            deleted: CancellationToken::new(),
        })
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<Item>> {
        // A poisoned lock only means another thread panicked while holding it; the queue
        // itself is still consistent (every operation is a single push or pop).
        lock(&self.items)
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Arc<Queue>>,
    broadcasts: HashMap<String, Vec<Weak<Queue>>>,
}

struct Inner {
    config: MemoryConfig,
    state: Mutex<State>,
    dead_letters: AtomicU64,
    closed: CancellationToken,
}

/// One in-process broker. Cheap to clone; clones share the broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl MemoryBroker {
    /// A broker with these limits.
    pub fn new(config: MemoryConfig) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                dead_letters: AtomicU64::new(0),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// A handle for one node. Closing the handle ends that node's subscriptions only.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport {
            broker: self.clone(),
            closed: self.inner.closed.child_token(),
        }
    }

    /// Closes the whole broker: every subscription ends, every publish fails.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Messages dropped after too many deliveries or rejected without requeue.
    pub fn dead_letters(&self) -> u64 {
        self.inner.dead_letters.load(Ordering::Relaxed)
    }

    /// Messages waiting (not delivered) in a queue channel.
    pub fn depth(&self, channel: &str) -> usize {
        self.state()
            .queues
            .get(channel)
            .map_or(0, |q| q.items().len())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut state = self.state();
        Arc::clone(
            state
                .queues
                .entry(name.to_owned())
                .or_insert_with(|| Queue::new(name.to_owned())),
        )
    }

    fn push(&self, queue: &Queue, payload: Bytes) -> Result<(), TransportError> {
        let mut items = queue.items();
        if items.len() >= self.inner.config.queue_capacity {
            return Err(TransportError::Full {
                channel: queue.name.clone(),
                capacity: self.inner.config.queue_capacity,
            });
        }
        items.push_back(Item {
            payload,
            deliveries: 0,
        });
        drop(items);
        queue.notify.notify_waiters();
        queue.notify.notify_one();
        Ok(())
    }
}

/// One node's handle on a [`MemoryBroker`].
#[derive(Clone)]
pub struct MemoryTransport {
    broker: MemoryBroker,
    closed: CancellationToken,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("closed", &self.closed.is_cancelled())
            .finish()
    }
}

impl MemoryTransport {
    /// Disconnects this handle, as a crashed node would: its subscriptions end and its
    /// unacknowledged deliveries go back to their queues.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The broker this handle belongs to.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.is_cancelled() {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }
}

struct MemoryAcker {
    queue: Arc<Queue>,
    item: Option<Item>,
    broker: Arc<Inner>,
}

impl MemoryAcker {
    fn settle(&mut self, requeue: bool) {
        let Some(item) = self.item.take() else { return };
        if self.queue.deleted.is_cancelled() {
            return;
        }
        if requeue && item.deliveries < self.broker.config.max_deliveries {
            self.queue.items().push_front(item);
            self.queue.notify.notify_one();
        } else {
            self.broker.dead_letters.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel = %self.queue.name, deliveries = item.deliveries, "message dead-lettered");
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&mut self) -> Result<(), TransportError> {
        self.item = None;
        Ok(())
    }
    async fn nack(&mut self, requeue: bool) -> Result<(), TransportError> {
        self.settle(requeue);
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        self.settle(true);
    }
}

fn consume(queue: Arc<Queue>, broker: Arc<Inner>, closed: CancellationToken) -> Subscription {
    let stream = futures::stream::unfold(
        (queue, broker, closed),
        |(queue, broker, closed)| async move {
            loop {
                let waiting_on = Arc::clone(&queue);
                let notified = waiting_on.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if closed.is_cancelled() || queue.deleted.is_cancelled() {
                    return None;
                }
                let next = queue.items().pop_front();
                if let Some(mut item) = next {
                    item.deliveries += 1;
                    let delivery = Delivery::new(
                        item.payload.clone(),
                        item.deliveries > 1,
                        Box::new(MemoryAcker {
                            queue: Arc::clone(&queue),
                            item: Some(item),
                            broker: Arc::clone(&broker),
                        }),
                    );
                    return Some((delivery, (queue, broker, closed)));
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = closed.cancelled() => return None,
                    () = queue.deleted.cancelled() => return None,
                }
            }
        },
    );
    Subscription::new(stream)
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn declare(&self, channel: &ChannelSpec) -> Result<(), TransportError> {
        self.check_open()?;
        if channel.kind == ChannelKind::Queue {
            self.broker.queue(&channel.name);
        }
        Ok(())
    }

    async fn publish(&self, channel: &ChannelSpec, payload: Bytes) -> Result<(), TransportError> {
        self.check_open()?;
        match channel.kind {
            ChannelKind::Queue => {
                let queue = self.broker.queue(&channel.name);
                self.broker.push(&queue, payload)
            }
            ChannelKind::Broadcast => {
                let targets: Vec<Arc<Queue>> = {
                    let mut state = self.broker.state();
                    let subs = state
                        .broadcasts
                        .entry(channel.name.to_string())
                        .or_default();
                    subs.retain(|w| w.strong_count() > 0);
                    subs.iter().filter_map(Weak::upgrade).collect()
                };
                for queue in targets {
                    // A slow subscriber of an announcement channel loses messages rather
                    // than blocking the publisher; announcements are repeated anyway.
                    if let Err(err) = self.broker.push(&queue, payload.clone()) {
                        tracing::debug!(cause = %err, "broadcast subscriber is full");
                    }
                }
                Ok(())
            }
        }
    }

    async fn subscribe(&self, channel: &ChannelSpec) -> Result<Subscription, TransportError> {
        self.check_open()?;
        let queue = match channel.kind {
            ChannelKind::Queue => self.broker.queue(&channel.name),
            ChannelKind::Broadcast => {
                let queue = Queue::new(format!("{}.subscriber", channel.name));
                self.broker
                    .state()
                    .broadcasts
                    .entry(channel.name.to_string())
                    .or_default()
                    .push(Arc::downgrade(&queue));
                queue
            }
        };
        Ok(consume(
            queue,
            Arc::clone(&self.broker.inner),
            self.closed.clone(),
        ))
    }

    async fn delete(&self, channel: &ChannelSpec) -> Result<(), TransportError> {
        self.check_open()?;
        if let Some(queue) = self.broker.state().queues.remove(channel.name.as_ref()) {
            queue.deleted.cancel();
        }
        Ok(())
    }
}
