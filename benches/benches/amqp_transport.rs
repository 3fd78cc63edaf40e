//! AMQP transport against raw lapin: publish N messages with publisher confirms and consume
//! them (manual ack) on the same RabbitMQ, in the same run, the same way:
//!
//! - one connection publishes, another consumes; a durable quorum queue with the arguments
//!   the transport gives its queues, persistent mandatory messages, prefetch 32;
//! - at most `WINDOW` publishes wait for their confirm at a time (each publish awaits its
//!   own confirm, concurrently), the consumer acks each delivery after receiving it.
//!
//! Run: `cargo bench -p kraken-benches --bench amqp_transport` with RabbitMQ at
//! `KRAKEN_AMQP_URL` (default `amqp://127.0.0.1:5672/%2f`; `.ci/rabbitmq.sh` starts one).
//! Besides criterion's timings it prints messages per second of both (median of 21
//! alternating rounds), the median of the rounds' ratios, and the CPU time this process
//! spends per message.
//! Set `KRAKEN_BENCH_VERBOSE=1` to see every round. Without a broker it says so and
//! measures nothing.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use kraken_core::model::{DeploymentId, LogLine, LogStream, NodeId};
use kraken_core::transport::amqp::{AmqpConfig, AmqpTransport, DEFAULT_URL};
use kraken_core::transport::{Subscription, Transport};
use kraken_core::wire::{self, ChannelKind, ChannelSpec, Envelope, LogMessage};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Messages per measured batch.
const MESSAGES: usize = 1000;
/// Publishes awaiting their confirm at once.
const WINDOW: usize = 64;
/// Prefetch of both consumers.
const PREFETCH: u16 = 32;
/// Alternating rounds behind the printed ratio.
const ROUNDS: usize = 21;

fn url() -> String {
    std::env::var("KRAKEN_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A log-like message, as workers send them.
fn payload() -> Bytes {
    let envelope = Envelope::new(
        NodeId::random(),
        1,
        LogMessage {
            deployment: DeploymentId::random(),
            generation: 1,
            lines: vec![LogLine::new(
                LogStream::Stdout,
                "GET /health 200 0.4ms user-agent=kube-probe/1.29",
            )],
        },
    );
    wire::encode(&envelope).unwrap_or_default()
}

/// Our transport: one handle publishes, another consumes.
struct Ours {
    publisher: AmqpTransport,
    channel: ChannelSpec,
    subscription: Mutex<Subscription>,
}

impl Ours {
    async fn new(prefix: &str) -> Option<Ours> {
        let config = AmqpConfig::default()
            .url(url())
            .prefix(prefix)
            .prefetch(PREFETCH)
            .connect_timeout(Duration::from_secs(5))
            .queue_expiry(Some(Duration::from_secs(600)));
        let publisher = AmqpTransport::connect(config.clone()).await.ok()?;
        let consumer = AmqpTransport::connect(config).await.ok()?;
        let channel = ChannelSpec {
            name: "bench".into(),
            kind: ChannelKind::Queue,
        };
        let subscription = consumer.subscribe(&channel).await.ok()?;
        Some(Ours {
            publisher,
            channel,
            subscription: Mutex::new(subscription),
        })
    }

    async fn run(&self, payload: &Bytes) -> Duration {
        let started = Instant::now();
        let publish = futures::stream::iter(0..MESSAGES).for_each_concurrent(WINDOW, |_| async {
            if let Err(err) = self.publisher.publish(&self.channel, payload.clone()).await {
                panic!("publish failed: {err}");
            }
        });
        let consume = async {
            let mut subscription = self.subscription.lock().await;
            for _ in 0..MESSAGES {
                match subscription.next().await {
                    Some(delivery) => {
                        if let Err(err) = delivery.ack().await {
                            panic!("ack failed: {err}");
                        }
                    }
                    None => panic!("subscription ended"),
                }
            }
        };
        futures::join!(publish, consume);
        started.elapsed()
    }
}

/// Raw lapin doing the same.
struct Raw {
    publisher: Channel,
    queue: String,
    consumer: Mutex<Consumer>,
    _connections: (Connection, Connection),
}

impl Raw {
    async fn new(prefix: &str) -> Option<Raw> {
        let uri = url();
        let publishing = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .ok()?;
        let consuming = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .ok()?;
        let queue = format!("{prefix}.raw");
        let publisher = publishing.create_channel().await.ok()?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .ok()?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
        // The arguments the transport gives its queues, so only the client differs.
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(format!("{prefix}.dead").into()),
        );
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(4));
        arguments.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        publisher
            .queue_declare(queue.as_str().into(), durable, arguments)
            .await
            .ok()?;
        let channel = consuming.create_channel().await.ok()?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .ok()?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .ok()?;
        Some(Raw {
            publisher,
            queue,
            consumer: Mutex::new(consumer),
            _connections: (publishing, consuming),
        })
    }

    async fn run(&self, payload: &Bytes) -> Duration {
        let started = Instant::now();
        let publish = futures::stream::iter(0..MESSAGES).for_each_concurrent(WINDOW, |_| async {
            let confirmed = match self
                .publisher
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
            {
                Ok(confirm) => confirm.await,
                Err(err) => Err(err),
            };
            match confirmed {
                Ok(confirmation) if confirmation.is_ack() => {}
                other => panic!("publish failed: {other:?}"),
            }
        });
        let consume = async {
            let mut consumer = self.consumer.lock().await;
            for _ in 0..MESSAGES {
                match consumer.next().await {
                    Some(Ok(delivery)) => {
                        if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
                            panic!("ack failed: {err}");
                        }
                    }
                    other => panic!("consumer ended: {other:?}"),
                }
            }
        };
        futures::join!(publish, consume);
        started.elapsed()
    }

    async fn cleanup(&self) {
        let _ = self
            .publisher
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

fn per_second(elapsed: Duration) -> f64 {
    MESSAGES as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("amqp_transport: no tokio runtime: {err}");
            return;
        }
    };
    let prefix = format!("kraken-bench-{}", &uuid_suffix());
    let (ours, raw) =
        runtime.block_on(async { (Ours::new(&prefix).await, Raw::new(&prefix).await) });
    let (Some(ours), Some(raw)) = (ours, raw) else {
        eprintln!(
            "amqp_transport: no RabbitMQ at {} (run .ci/rabbitmq.sh); skipped",
            url()
        );
        return;
    };
    let ours = Arc::new(ours);
    let raw = Arc::new(raw);
    let payload = payload();

    // Warm up both paths, then alternate so drift in the broker hits both alike.
    runtime.block_on(async {
        ours.run(&payload).await;
        raw.run(&payload).await;
    });
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut raw_cpu) = (0u64, 0u64);
    for round in 0..ROUNDS {
        runtime.block_on(async {
            // Alternate who goes first, so neither always follows the other.
            if round % 2 == 0 {
                let start = cpu_ticks();
                ours_rates.push(per_second(ours.run(&payload).await));
                ours_cpu += cpu_ticks() - start;
            }
            let start = cpu_ticks();
            raw_rates.push(per_second(raw.run(&payload).await));
            raw_cpu += cpu_ticks() - start;
            if round % 2 == 1 {
                let start = cpu_ticks();
                ours_rates.push(per_second(ours.run(&payload).await));
                ours_cpu += cpu_ticks() - start;
            }
        });
    }
    if std::env::var_os("KRAKEN_BENCH_VERBOSE").is_some() {
        for (ours, raw) in ours_rates.iter().zip(&raw_rates) {
            println!("round: AmqpTransport {ours:.0} msg/s, raw lapin {raw:.0} msg/s");
        }
    }
    // Each round pairs two runs made seconds apart: the median of the per-round ratios is
    // steadier than the ratio of medians when the broker's pace drifts.
    let ratio = median(
        ours_rates
            .iter()
            .zip(&raw_rates)
            .map(|(ours, raw)| ours / raw)
            .collect(),
    );
    let (ours_rate, raw_rate) = (median(ours_rates), median(raw_rates));
    // /proc counts CPU time in USER_HZ, which Linux fixes at 100 per second.
    let micros_per_message = |ticks: u64| ticks as f64 * 10_000.0 / (ROUNDS * MESSAGES) as f64;
    println!(
        "amqp_transport: CPU of this process (lapin's IO threads included) per message: \
         AmqpTransport {:.0} µs, raw lapin {:.0} µs",
        micros_per_message(ours_cpu),
        micros_per_message(raw_cpu),
    );
    println!(
        "amqp_transport: {MESSAGES} messages of {} bytes, window {WINDOW}, prefetch {PREFETCH}, \
         median of {ROUNDS} rounds: AmqpTransport {ours_rate:.0} msg/s, raw lapin {raw_rate:.0} msg/s, \
         ratio {ratio:.2} (median of the rounds' ratios)",
        payload.len(),
    );

    let mut group = c.benchmark_group("amqp_publish_consume_1000");
    group.sample_size(10);
    group.bench_function("amqp_transport", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let ours = Arc::clone(&ours);
            let payload = payload.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += ours.run(&payload).await;
                }
                total
            }
        });
    });
    group.bench_function("raw_lapin", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let raw = Arc::clone(&raw);
            let payload = payload.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw.run(&payload).await;
                }
                total
            }
        });
    });
    group.finish();

    runtime.block_on(async {
        raw.cleanup().await;
        let _ = ours.publisher.delete(&ours.channel).await;
    });
}

/// CPU time (user + system) this process used so far, in clock ticks; 0 off Linux.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

criterion_group!(benches, bench);
criterion_main!(benches);
