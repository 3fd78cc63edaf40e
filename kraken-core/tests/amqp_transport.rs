//! What only the AMQP transport has to prove: a broker restart loses nothing, a publish
//! during an outage waits, poison messages are dead-lettered, a dead broker is a timely
//! error.
//!
//! The tests marked `needs rabbitmq` use the broker at `KRAKEN_AMQP_URL` (default
//! `amqp://127.0.0.1:5672/%2f`) and stop and start its application with `rabbitmqctl`
//! (override the command with `KRAKEN_RABBITMQCTL`), so they run one at a time:
//!
//! ```text
//! cargo test -p kraken-core --features amqp --test amqp_transport -- --include-ignored --nocapture
//! ```
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)]

#[path = "support/transport.rs"]
mod support;

use kraken_core::model::{DeploymentId, LogLine, LogStream, NodeId};
use kraken_core::transport::amqp::{AmqpConfig, AmqpTransport};
use kraken_core::transport::{Transport, TransportError, TransportExt};
use kraken_core::wire::{
    self, ChannelKind, ChannelSpec, Envelope, LOG, LogMessage, MessageId, WorkRequestMessage,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{next_within, unique};

/// Tests that stop the broker take this first.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl_command() -> String {
    std::env::var("KRAKEN_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

async fn rabbitmqctl(action: &str) {
    let status = tokio::process::Command::new(rabbitmqctl_command())
        .arg(action)
        .kill_on_drop(true)
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {action} failed: {status}");
}

/// Starts the broker application again if a test fails while it is stopped, so the tests
/// after it still have a broker.
struct RestartOnPanic;

impl Drop for RestartOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new(rabbitmqctl_command())
                .arg("start_app")
                .status();
        }
    }
}

fn work_order() -> WorkRequestMessage {
    WorkRequestMessage::CancelDeployment {
        deployment: DeploymentId::random(),
        generation: 1,
    }
}

fn log_batch(i: usize) -> LogMessage {
    LogMessage {
        deployment: DeploymentId::random(),
        generation: 1,
        lines: vec![LogLine::new(LogStream::Stdout, format!("line {i}"))],
    }
}

/// What the receiving side saw.
#[derive(Default)]
struct Seen {
    ids: Mutex<HashSet<MessageId>>,
    duplicates: AtomicUsize,
    failed_acks: AtomicUsize,
}

impl Seen {
    /// Handles a message once per id; counts the duplicates.
    fn handle(&self, id: MessageId) {
        let first = self.ids.lock().unwrap().insert(id);
        if !first {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq"]
async fn broker_restart_loses_nothing() {
    support::init_logging();
    let _broker = BROKER.lock().await;
    let config = support::amqp::config()
        .max_deliveries(10)
        .publish_timeout(Duration::from_secs(90));
    let publisher = AmqpTransport::connect(config.clone()).await.unwrap();
    let receiver = AmqpTransport::connect(config).await.unwrap();
    let work = wire::work_channel(&NodeId::random());
    const WORK: usize = 200;
    const LOGS: usize = 1000;

    let seen = Arc::new(Seen::default());
    let mut orders = receiver.listen(&work).await.unwrap();
    let mut logs = receiver.listen(&LOG).await.unwrap();
    let consumers = [
        tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Some(received) = orders.next().await {
                    seen.handle(received.envelope.id);
                    if received.ack().await.is_err() {
                        seen.failed_acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }),
        tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Some(received) = logs.next().await {
                    seen.handle(received.envelope.id);
                    if received.ack().await.is_err() {
                        seen.failed_acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }),
    ];

    // Two publishers, paced so the restart falls in the middle of both streams.
    let work_sender = tokio::spawn({
        let publisher = publisher.clone();
        let work = work.clone();
        async move {
            let mut sent = Vec::with_capacity(WORK);
            for _ in 0..WORK {
                let envelope = Envelope::new(NodeId::random(), 1, work_order());
                publisher.send(&work, &envelope).await.unwrap();
                sent.push(envelope.id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    let log_sender = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let mut sent = Vec::with_capacity(LOGS);
            for i in 0..LOGS {
                let envelope = Envelope::new(NodeId::random(), 1, log_batch(i));
                publisher.send(&LOG, &envelope).await.unwrap();
                sent.push(envelope.id);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            sent
        }
    });

    while seen.count() < (WORK + LOGS) / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart_guard = RestartOnPanic;
    let before = seen.count();
    let stopped_at = Instant::now();
    rabbitmqctl("stop_app").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl("start_app").await;
    let outage = stopped_at.elapsed();
    drop(restart_guard);

    let mut sent: Vec<MessageId> = work_sender.await.unwrap();
    sent.extend(log_sender.await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.count() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = seen.ids.lock().unwrap().clone();
    let missing = sent.iter().filter(|id| !received.contains(id)).count();
    let duplicates = seen.duplicates.load(Ordering::Relaxed);
    let failed_acks = seen.failed_acks.load(Ordering::Relaxed);
    println!(
        "broker restart: {} sent ({WORK} work, {LOGS} log), {} received, {missing} missing, \
         {duplicates} duplicates dropped by id, {failed_acks} acks failed, \
         {before} received before the restart, outage {outage:.1?}",
        sent.len(),
        received.len(),
    );
    assert_eq!(missing, 0, "messages lost in the restart");
    assert_eq!(received.len(), WORK + LOGS);
    assert!(publisher.is_connected() && receiver.is_connected());
    receiver.close();
    publisher.close();
    for consumer in consumers {
        tokio::time::timeout(Duration::from_secs(10), consumer)
            .await
            .expect("subscriptions end on close")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq"]
async fn publish_during_an_outage_waits_then_succeeds() {
    support::init_logging();
    let _broker = BROKER.lock().await;
    let config = support::amqp::config().publish_timeout(Duration::from_secs(60));
    let transport = AmqpTransport::connect(config).await.unwrap();
    let channel = ChannelSpec {
        name: unique("outage").into(),
        kind: ChannelKind::Queue,
    };
    let mut subscription = transport.subscribe(&channel).await.unwrap();

    let restart_guard = RestartOnPanic;
    rabbitmqctl("stop_app").await;
    let publishing = tokio::spawn({
        let transport = transport.clone();
        let channel = channel.clone();
        async move { transport.publish(&channel, "during".into()).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !publishing.is_finished(),
        "publish returned while the broker was down"
    );
    assert!(!transport.is_connected());
    rabbitmqctl("start_app").await;
    drop(restart_guard);

    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publish finishes after the broker is back")
        .unwrap()
        .unwrap();
    let delivery = next_within(&mut subscription, 30).await;
    assert_eq!(delivery.payload, "during");
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq"]
async fn publish_fails_once_the_outage_outlasts_the_timeout() {
    support::init_logging();
    let _broker = BROKER.lock().await;
    let config = support::amqp::config().publish_timeout(Duration::from_secs(2));
    let transport = AmqpTransport::connect(config).await.unwrap();
    let channel = ChannelSpec {
        name: unique("too-long").into(),
        kind: ChannelKind::Queue,
    };
    transport.declare(&channel).await.unwrap();
    let restart_guard = RestartOnPanic;
    rabbitmqctl("stop_app").await;
    let started = Instant::now();
    let result = transport.publish(&channel, "late".into()).await;
    let waited = started.elapsed();
    rabbitmqctl("start_app").await;
    drop(restart_guard);
    assert!(
        matches!(result, Err(TransportError::Timeout { .. })),
        "{result:?}"
    );
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(5));
    // And the transport recovers for the next one.
    let config = transport
        .config()
        .clone()
        .publish_timeout(Duration::from_secs(60));
    drop(transport);
    let transport = AmqpTransport::connect(config).await.unwrap();
    transport.publish(&channel, "later".into()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs rabbitmq"]
async fn poison_messages_end_in_the_dead_letter_queue() {
    support::init_logging();
    let _broker = BROKER.lock().await;
    let config = support::amqp::config().max_deliveries(3);
    let transport = AmqpTransport::connect(config.clone()).await.unwrap();
    let channel = ChannelSpec {
        name: unique("poison").into(),
        kind: ChannelKind::Queue,
    };
    assert_eq!(transport.dead_letter_count().await.unwrap(), 0);

    // Rejected with requeue by a handler, three times.
    transport
        .publish(&channel, "rejected".into())
        .await
        .unwrap();
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    for delivery in 1..=3 {
        let received = next_within(&mut subscription, 10).await;
        assert_eq!(received.payload, "rejected");
        assert_eq!(received.redelivered, delivery > 1);
        received.nack(true).await.unwrap();
    }
    support::assert_silent(&mut subscription, 1000).await;
    assert_eq!(dead_letters_within(&transport, 1).await, 1);
    drop(subscription);

    // Taken by consumers that die before settling it, three times: the broker's own
    // delivery limit dead-letters it.
    transport.publish(&channel, "crashes".into()).await.unwrap();
    for _ in 0..3 {
        let doomed = AmqpTransport::connect(config.clone()).await.unwrap();
        let mut subscription = doomed.subscribe(&channel).await.unwrap();
        let received = next_within(&mut subscription, 10).await;
        assert_eq!(received.payload, "crashes");
        doomed.close();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Settling after the connection is gone fails harmlessly.
        assert!(received.ack().await.is_err());
    }
    let mut subscription = transport.subscribe(&channel).await.unwrap();
    support::assert_silent(&mut subscription, 1000).await;
    assert_eq!(dead_letters_within(&transport, 2).await, 2);
}

async fn dead_letters_within(transport: &AmqpTransport, expected: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = transport.dead_letter_count().await.unwrap();
        if count >= expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connecting_to_a_silent_broker_times_out() {
    // Accepts TCP connections and never says a word, like a wedged broker.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let config = AmqpConfig::default()
        .url(format!("amqp://{address}/%2f"))
        .connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let result = AmqpTransport::connect(config).await;
    assert!(
        matches!(result, Err(TransportError::Timeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    held.abort();
}

#[tokio::test]
async fn connecting_to_nothing_is_an_error() {
    // A port nobody listens on: bind one, then free it.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = AmqpConfig::default()
        .url(format!("amqp://{address}/%2f"))
        .connect_timeout(Duration::from_secs(5));
    let result = AmqpTransport::connect(config).await;
    assert!(
        matches!(
            result,
            Err(TransportError::Broker { .. } | TransportError::Timeout { .. })
        ),
        "{result:?}"
    );
    let invalid = AmqpTransport::connect(AmqpConfig::default().url("not a url")).await;
    assert!(matches!(invalid, Err(TransportError::Broker { .. })));
}
