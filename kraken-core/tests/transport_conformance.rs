//! One suite for every `Transport` backend, so they cannot drift apart.
//!
//! Each check is an async function over a [`Backend`] (a source of transport handles on one
//! broker, as separate nodes would hold them). The memory backend always runs; the AMQP
//! backend runs with `--include-ignored` against `KRAKEN_AMQP_URL` (default
//! `amqp://127.0.0.1:5672/%2f`), every test under a random queue prefix:
//!
//! ```text
//! cargo test -p kraken-core --features amqp --test transport_conformance -- --include-ignored
//! ```
#![allow(clippy::unwrap_used)]

#[path = "support/transport.rs"]
mod support;

use async_trait::async_trait;
use bytes::Bytes;
use kraken_core::model::{
    DeploymentId, DeploymentStatus, LogLine, LogStream, NodeId, NodeStats, PlatformInfo,
};
use kraken_core::transport::memory::{MemoryBroker, MemoryConfig};
use kraken_core::transport::{Transport, TransportExt};
use kraken_core::wire::{
    self, Channel, ChannelKind, ChannelSpec, DEPLOYMENT, DeploymentMessage, Envelope, LOG,
    LogMessage, MAX_MESSAGE_BYTES, Message, PLATFORM, PlatformMessage, SYSINFO, SysinfoMessage,
    WorkRequestMessage,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{assert_silent, next_within, unique};

/// The poison limit every backend is configured with here.
const MAX_DELIVERIES: u32 = 3;

/// Hands out transport handles on one broker.
#[async_trait]
trait Backend: Send + Sync {
    /// A new handle, as one node would hold it.
    async fn transport(&self) -> Arc<dyn Transport>;
}

struct Memory(MemoryBroker);

#[async_trait]
impl Backend for Memory {
    async fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.transport())
    }
}

fn memory() -> Memory {
    support::init_logging();
    Memory(MemoryBroker::new(MemoryConfig {
        max_deliveries: MAX_DELIVERIES,
        ..MemoryConfig::default()
    }))
}

#[cfg(feature = "amqp")]
struct Amqp(kraken_core::transport::amqp::AmqpConfig);

#[cfg(feature = "amqp")]
#[async_trait]
impl Backend for Amqp {
    async fn transport(&self) -> Arc<dyn Transport> {
        let transport = kraken_core::transport::amqp::AmqpTransport::connect(self.0.clone())
            .await
            .expect("RabbitMQ reachable at KRAKEN_AMQP_URL");
        Arc::new(transport)
    }
}

#[cfg(feature = "amqp")]
fn amqp() -> Amqp {
    support::init_logging();
    Amqp(support::amqp::config().max_deliveries(MAX_DELIVERIES))
}

fn queue(name: &str) -> ChannelSpec {
    ChannelSpec {
        name: unique(name).into(),
        kind: ChannelKind::Queue,
    }
}

fn broadcast(name: &str) -> ChannelSpec {
    ChannelSpec {
        name: unique(name).into(),
        kind: ChannelKind::Broadcast,
    }
}

fn bytes(text: impl Into<String>) -> Bytes {
    Bytes::from(text.into())
}

async fn queue_delivers_each_message_to_one_subscriber(backend: &dyn Backend) {
    let (a, b) = (backend.transport().await, backend.transport().await);
    let channel = queue("competing");
    let mut first = a.subscribe(&channel).await.unwrap();
    let mut second = b.subscribe(&channel).await.unwrap();
    let publisher = backend.transport().await;
    let sent: HashSet<String> = (0..40).map(|i| format!("m{i}")).collect();
    for message in &sent {
        publisher
            .publish(&channel, bytes(message.clone()))
            .await
            .unwrap();
    }
    let mut received = Vec::new();
    let collect = async {
        while received.len() < sent.len() {
            let delivery = tokio::select! {
                Some(d) = first.next() => d,
                Some(d) = second.next() => d,
            };
            received.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("every message delivered");
    let unique_received: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(
        received.len(),
        unique_received.len(),
        "a message came twice"
    );
    assert_eq!(unique_received, sent);
    assert_silent(&mut first, 300).await;
    assert_silent(&mut second, 100).await;
}

async fn dropped_delivery_is_redelivered(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let channel = queue("dropped");
    transport.publish(&channel, bytes("once")).await.unwrap();
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    let delivery = next_within(&mut subscription, 10).await;
    assert_eq!(delivery.payload, "once");
    assert!(!delivery.redelivered);
    drop(delivery);
    let again = next_within(&mut subscription, 10).await;
    assert_eq!(again.payload, "once");
    assert!(again.redelivered);
    // A subscriber that goes away with an unsettled delivery gives it back too.
    drop(subscription);
    drop(again);
    let other = backend.transport().await;
    let mut next = other.subscribe(&channel).await.unwrap();
    let last = next_within(&mut next, 10).await;
    assert_eq!(last.payload, "once");
    assert!(last.redelivered);
    last.ack().await.unwrap();
    assert_silent(&mut next, 300).await;
}

async fn nack_with_requeue_redelivers(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let channel = queue("requeue");
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    transport
        .publish(&channel, bytes("retry me"))
        .await
        .unwrap();
    let delivery = next_within(&mut subscription, 10).await;
    assert!(!delivery.redelivered);
    delivery.nack(true).await.unwrap();
    let again = next_within(&mut subscription, 10).await;
    assert_eq!(again.payload, "retry me");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    assert_silent(&mut subscription, 300).await;
}

async fn nack_without_requeue_drops(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let channel = queue("reject");
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    transport.publish(&channel, bytes("bad")).await.unwrap();
    transport.publish(&channel, bytes("good")).await.unwrap();
    let bad = next_within(&mut subscription, 10).await;
    assert_eq!(bad.payload, "bad");
    bad.nack(false).await.unwrap();
    let good = next_within(&mut subscription, 10).await;
    assert_eq!(good.payload, "good");
    good.ack().await.unwrap();
    assert_silent(&mut subscription, 300).await;
}

async fn poison_message_is_dead_lettered(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let channel = queue("poison");
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    transport.publish(&channel, bytes("poison")).await.unwrap();
    let mut deliveries = 0;
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_millis(1500), subscription.next()).await
    {
        assert_eq!(delivery.payload, "poison");
        deliveries += 1;
        delivery.nack(true).await.unwrap();
    }
    assert_eq!(deliveries, MAX_DELIVERIES);
    transport.publish(&channel, bytes("next")).await.unwrap();
    let next = next_within(&mut subscription, 10).await;
    assert_eq!(next.payload, "next");
    next.ack().await.unwrap();
}

async fn broadcast_reaches_every_subscriber(backend: &dyn Backend) {
    let (a, b) = (backend.transport().await, backend.transport().await);
    let channel = broadcast("announce");
    let mut first = a.subscribe(&channel).await.unwrap();
    let mut second = b.subscribe(&channel).await.unwrap();
    let mut third = a.subscribe(&channel).await.unwrap();
    let publisher = backend.transport().await;
    for i in 0..3 {
        publisher
            .publish(&channel, bytes(format!("hello {i}")))
            .await
            .unwrap();
    }
    for subscription in [&mut first, &mut second, &mut third] {
        for i in 0..3 {
            let delivery = next_within(subscription, 10).await;
            assert_eq!(delivery.payload, format!("hello {i}"));
            delivery.ack().await.unwrap();
        }
        assert_silent(subscription, 200).await;
    }
}

async fn queue_keeps_messages_until_someone_subscribes(backend: &dyn Backend) {
    let publisher = backend.transport().await;
    let channel = queue("early");
    for i in 0..5 {
        publisher
            .publish(&channel, bytes(format!("early {i}")))
            .await
            .unwrap();
    }
    let subscriber = backend.transport().await;
    let mut subscription = subscriber.subscribe(&channel).await.unwrap();
    for i in 0..5 {
        let delivery = next_within(&mut subscription, 10).await;
        assert_eq!(delivery.payload, format!("early {i}"));
        delivery.ack().await.unwrap();
    }
}

async fn queue_keeps_publisher_order(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let channel = queue("order");
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    for i in 0..100 {
        transport
            .publish(&channel, bytes(format!("{i}")))
            .await
            .unwrap();
    }
    for i in 0..100 {
        let delivery = next_within(&mut subscription, 10).await;
        assert_eq!(delivery.payload, format!("{i}"));
        delivery.ack().await.unwrap();
    }
}

async fn subscriptions_are_streams(backend: &dyn Backend) {
    use futures::StreamExt;
    let transport = backend.transport().await;
    let channel = queue("stream");
    let raw = transport.subscribe(&channel).await.unwrap();
    for i in 0..3 {
        transport
            .publish(&channel, bytes(format!("{i}")))
            .await
            .unwrap();
    }
    let deliveries: Vec<_> = tokio::time::timeout(Duration::from_secs(10), raw.take(3).collect())
        .await
        .expect("three deliveries from the stream");
    for (i, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.payload, format!("{i}"));
        delivery.ack().await.unwrap();
    }

    // A typed subscription skips what it cannot decode, as a stream too.
    let log = Channel::<LogMessage>::named(unique("stream-log"), ChannelKind::Queue);
    let typed = transport.listen(&log).await.unwrap();
    let rejected = typed.rejected();
    transport
        .publish(log.spec(), bytes("not an envelope"))
        .await
        .unwrap();
    let envelope = Envelope::new(NodeId::random(), 1, log_message("streamed"));
    transport.send(&log, &envelope).await.unwrap();
    let received: Vec<_> = tokio::time::timeout(Duration::from_secs(10), typed.take(1).collect())
        .await
        .expect("the well-formed message from the stream");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].envelope, envelope);
    assert_eq!(rejected.load(Ordering::Relaxed), 1);
}

async fn typed_round_trip(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let log = Channel::<LogMessage>::named(unique("log"), ChannelKind::Queue);
    let mut logs = transport.listen(&log).await.unwrap();
    let envelope = Envelope::new(NodeId::random(), 4, log_message("built"));
    transport.send(&log, &envelope).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), logs.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.envelope, envelope);
    assert!(!received.redelivered());
    received.ack().await.unwrap();

    let node = NodeId::random();
    let work = Channel::<WorkRequestMessage>::named(
        format!("work.{}.{}", node, unique("t")),
        ChannelKind::Queue,
    );
    let order = Envelope::new(
        NodeId::random(),
        9,
        WorkRequestMessage::CancelDeployment {
            deployment: DeploymentId::random(),
            generation: 2,
        },
    );
    transport.send(&work, &order).await.unwrap();
    let mut orders = transport.listen(&work).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.envelope, order);
    received.ack().await.unwrap();
    assert_eq!(logs.rejected().load(Ordering::Relaxed), 0);
}

fn log_message(text: &str) -> LogMessage {
    LogMessage {
        deployment: DeploymentId::random(),
        generation: 1,
        lines: vec![LogLine::new(LogStream::Stdout, text)],
    }
}

fn sysinfo_message() -> SysinfoMessage {
    SysinfoMessage {
        node: NodeId::random(),
        address: "10.0.0.7".to_owned(),
        stats: NodeStats::default(),
        instances: Vec::new(),
        leaving: false,
        candidate: false,
        proof: None,
    }
}

fn deployment_message() -> DeploymentMessage {
    DeploymentMessage {
        deployment: DeploymentId::random(),
        generation: 1,
        node: NodeId::random(),
        status: DeploymentStatus::Running,
        port: Some(8080),
        url: Some("http://10.0.0.7:8080".to_owned()),
        instance: None,
        stats: None,
        earlier: Vec::new(),
    }
}

fn platform_message() -> PlatformMessage {
    PlatformMessage {
        info: PlatformInfo {
            orchestrator: NodeId::random(),
            epoch: 3,
            api_addr: Some("10.0.0.7:7878".to_owned()),
            broker_url: None,
            candidates: Vec::new(),
        },
        proof: None,
        resigning: false,
        claim: false,
    }
}

/// Garbage, an oversized payload and another format version on `channel`, then a good
/// message: the typed subscription skips the three (counting them) and yields the fourth.
async fn rejects_undecodable<M: Message + PartialEq>(
    transport: &dyn Transport,
    channel: &Channel<M>,
    good: M,
) {
    let mut subscription = transport.listen(channel).await.unwrap();
    let spec = channel.spec();
    transport
        .publish(spec, Bytes::from_static(b"\x00\xffnot json at all"))
        .await
        .unwrap();
    transport
        .publish(spec, Bytes::from(vec![b'{'; MAX_MESSAGE_BYTES + 1]))
        .await
        .unwrap();
    let mut future = serde_json::to_value(Envelope::new(NodeId::random(), 1, &good)).unwrap();
    future["version"] = serde_json::json!(u32::from(wire::FORMAT_VERSION) + 1);
    transport
        .publish(spec, Bytes::from(serde_json::to_vec(&future).unwrap()))
        .await
        .unwrap();
    let envelope = Envelope::new(NodeId::random(), 1, good);
    transport.send(channel, &envelope).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(15), subscription.next())
        .await
        .expect("the good message arrives")
        .unwrap();
    assert_eq!(received.envelope, envelope, "on {}", channel.name());
    received.ack().await.unwrap();
    assert_eq!(
        subscription.rejected().load(Ordering::Relaxed),
        3,
        "on {}",
        channel.name()
    );
}

async fn undecodable_messages_are_skipped(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let t = transport.as_ref();
    rejects_undecodable(t, &SYSINFO, sysinfo_message()).await;
    rejects_undecodable(t, &DEPLOYMENT, deployment_message()).await;
    rejects_undecodable(t, &LOG, log_message("fine")).await;
    let work = wire::work_channel(&NodeId::random());
    let cancel = WorkRequestMessage::CancelDeployment {
        deployment: DeploymentId::random(),
        generation: 1,
    };
    rejects_undecodable(t, &work, cancel).await;
    rejects_undecodable(t, &PLATFORM, platform_message()).await;
}

async fn delete_drops_waiting_messages_and_ends_subscriptions(backend: &dyn Backend) {
    let transport = backend.transport().await;
    let waiting = queue("doomed");
    let watched = queue("watched");
    let mut watcher = transport.subscribe(&watched).await.unwrap();
    for i in 0..3 {
        transport
            .publish(&waiting, bytes(format!("lost {i}")))
            .await
            .unwrap();
    }
    transport.delete(&waiting).await.unwrap();
    transport.delete(&watched).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("the subscription of a deleted channel ends");
    assert!(ended.is_none());
    let mut fresh = transport.subscribe(&waiting).await.unwrap();
    assert_silent(&mut fresh, 500).await;
    transport.publish(&waiting, bytes("new")).await.unwrap();
    let delivery = next_within(&mut fresh, 10).await;
    assert_eq!(delivery.payload, "new");
    delivery.ack().await.unwrap();
    // Deleting what does not exist is fine.
    transport.delete(&queue("never")).await.unwrap();
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&super::memory()).await;
                }
            )*
        }

        #[cfg(feature = "amqp")]
        mod amqp_backend {
            $(
                #[tokio::test]
                #[ignore = "needs rabbitmq"]
                async fn $check() {
                    super::$check(&super::amqp()).await;
                }
            )*
        }
    };
}

conformance!(
    queue_delivers_each_message_to_one_subscriber,
    dropped_delivery_is_redelivered,
    nack_with_requeue_redelivers,
    nack_without_requeue_drops,
    poison_message_is_dead_lettered,
    broadcast_reaches_every_subscriber,
    queue_keeps_messages_until_someone_subscribes,
    queue_keeps_publisher_order,
    typed_round_trip,
    subscriptions_are_streams,
    undecodable_messages_are_skipped,
    delete_drops_waiting_messages_and_ends_subscriptions,
);
