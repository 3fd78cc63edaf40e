//! Shared by the integration tests: logging, timeouts, and broker settings.
#![allow(dead_code, clippy::unwrap_used)]

use kraken_core::transport::{Delivery, Subscription};
use std::time::Duration;

/// Logs to the test output, filtered by `RUST_LOG`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// The next delivery, failing the test if none comes within `secs`.
pub async fn next_within(subscription: &mut Subscription, secs: u64) -> Delivery {
    tokio::time::timeout(Duration::from_secs(secs), subscription.next())
        .await
        .expect("no delivery in time")
        .expect("subscription ended")
}

/// Asserts that nothing arrives for `millis`.
pub async fn assert_silent(subscription: &mut Subscription, millis: u64) {
    if let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_millis(millis), subscription.next()).await
    {
        panic!("unexpected delivery: {:?}", delivery.payload);
    }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

#[cfg(feature = "amqp")]
pub mod amqp {
    use kraken_core::transport::amqp::{AmqpConfig, DEFAULT_URL};
    use std::time::Duration;

    /// The broker under test: `KRAKEN_AMQP_URL`, or RabbitMQ on this machine.
    pub fn url() -> String {
        std::env::var("KRAKEN_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
    }

    /// A configuration with a prefix of its own, so runs never see each other's queues,
    /// and queues that expire once the test is over.
    pub fn config() -> AmqpConfig {
        AmqpConfig::default()
            .url(url())
            .prefix(super::unique("kraken-test"))
            .max_deliveries(3)
            .publish_timeout(Duration::from_secs(20))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
            .queue_expiry(Some(Duration::from_secs(600)))
    }
}
