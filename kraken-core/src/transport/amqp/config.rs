//! [`AmqpConfig`]: where the broker is and how the transport behaves when it misbehaves.

use super::super::TransportError;
use crate::util::{redact, without_password};
use lapin::uri::AMQPUri;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The broker a transport connects to unless told otherwise: RabbitMQ on this machine,
/// default vhost.
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672/%2f";

/// How to reach RabbitMQ and how to behave when it misbehaves.
///
/// Every node of one platform must use the same [`prefix`](Self::prefix) (it names the
/// queues) and should use the same [`max_deliveries`](Self::max_deliveries) (the broker
/// keeps the first value a queue was declared with; see the module docs).
///
/// ```
/// use kraken_core::transport::amqp::AmqpConfig;
/// use std::time::Duration;
///
/// let config = AmqpConfig::default()
///     .url("amqp://kraken:secret@10.0.0.2:5672/%2f")
///     .prefix("kraken-test")
///     .publish_timeout(Duration::from_secs(5));
/// assert_eq!(config.prefix, "kraken-test");
/// // Debug output never shows the password.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct AmqpConfig {
    /// The broker, as an AMQP URL (`amqp://user:password@host:port/vhost`). Query
    /// parameters `heartbeat`, `frame_max` and `channel_max` are honoured.
    pub url: String,
    /// Start of every queue and exchange name (`<prefix>.<channel>`), so that several
    /// platforms (or test runs) can share one broker without seeing each other.
    pub prefix: String,
    /// Most unacknowledged deliveries one subscription holds at a time (AMQP prefetch),
    /// which also bounds what waits in memory for the subscription to be read. At least 1.
    pub prefetch: u16,
    /// Deliveries of one message before a requeue turns into dead-lettering (the poison
    /// limit). At least 1.
    pub max_deliveries: u32,
    /// Longest a `publish` (and `declare`, `subscribe`, `delete`) waits, across
    /// reconnects, for the broker to confirm.
    pub publish_timeout: Duration,
    /// Longest one connection attempt (TCP, AMQP handshake, dead-letter topology) may
    /// take; lapin can otherwise hang on a broker that is down.
    pub connect_timeout: Duration,
    /// First delay before reconnecting after the connection was lost; doubles per failed
    /// attempt (with jitter) up to [`reconnect_max`](Self::reconnect_max).
    pub reconnect_min: Duration,
    /// Longest delay between two reconnect attempts.
    pub reconnect_max: Duration,
    /// AMQP heartbeat asked for when the URL does not set one: how fast a silent broker
    /// (a cut network) is noticed.
    pub heartbeat: Duration,
    /// Deletes a queue channel nobody used (no consumer, no declaration) for this long.
    /// `None` (the default) keeps queues forever; tests set it so that their randomly
    /// named queues do not pile up on a shared broker.
    pub queue_expiry: Option<Duration>,
    /// Most messages kept in the dead-letter queue; beyond it the oldest are dropped, so
    /// a stream of garbage cannot fill the broker's disk.
    pub dead_letter_limit: u32,
    /// The URL other nodes are told to use ([`broker_url`]); `None` means the connection
    /// URL without its password (unless it is RabbitMQ's default `guest` account).
    ///
    /// [`broker_url`]: crate::transport::Transport::broker_url
    pub advertise_url: Option<String>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: DEFAULT_URL.to_owned(),
            prefix: "kraken".to_owned(),
            prefetch: 32,
            max_deliveries: 5,
            publish_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            queue_expiry: None,
            dead_letter_limit: 10_000,
            advertise_url: None,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("max_deliveries", &self.max_deliveries)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("heartbeat", &self.heartbeat)
            .field("queue_expiry", &self.queue_expiry)
            .field("dead_letter_limit", &self.dead_letter_limit)
            .field("advertise_url", &self.advertise_url.as_deref().map(redact))
            .finish()
    }
}

impl AmqpConfig {
    /// Sets the broker URL.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the queue and exchange name prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the prefetch (unacknowledged deliveries per subscription).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the poison limit: deliveries of one message before it is dead-lettered.
    #[must_use]
    pub fn max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// Sets how long a publish may wait for the broker, reconnects included.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long one connection attempt may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff: first delay and longest delay.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Sets the heartbeat asked for when the URL does not set one.
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets the expiry of unused queue channels (`None`: never).
    #[must_use]
    pub fn queue_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.queue_expiry = expiry;
        self
    }

    /// Sets how many messages the dead-letter queue keeps.
    #[must_use]
    pub fn dead_letter_limit(mut self, limit: u32) -> Self {
        self.dead_letter_limit = limit;
        self
    }

    /// Sets the URL other nodes are told to use.
    #[must_use]
    pub fn advertise_url(mut self, url: impl Into<String>) -> Self {
        self.advertise_url = Some(url.into());
        self
    }

    pub(super) fn prefetch_count(&self) -> u16 {
        self.prefetch.max(1)
    }

    pub(super) fn delivery_limit(&self) -> u32 {
        self.max_deliveries.max(1)
    }

    /// The URL as lapin needs it: parsed, with literal IP hosts kept and our heartbeat.
    pub(super) fn amqp_uri(&self) -> Result<AMQPUri, TransportError> {
        let invalid = |reason: String| TransportError::Broker {
            channel: CONNECTION.to_owned(),
            reason: format!("invalid broker URL {}: {reason}", redact(&self.url)),
        };
        let mut uri: AMQPUri = self.url.parse().map_err(invalid)?;
        // amq-protocol-uri takes the host from `Url::domain()`, which is `None` for an IP
        // address, and then falls back to "localhost": `amqp://10.0.0.2` would connect to
        // this machine. Put the literal address back.
        if let Some(ip) = literal_ip_host(&self.url) {
            uri.authority.host = ip;
        }
        if uri.query.heartbeat.is_none() {
            let secs = u16::try_from(self.heartbeat.as_secs()).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(secs);
        }
        Ok(uri)
    }

    /// What [`Transport::broker_url`](crate::transport::Transport::broker_url) answers.
    pub(super) fn advertised(&self) -> String {
        if let Some(url) = &self.advertise_url {
            return url.clone();
        }
        match self.url.parse::<AMQPUri>() {
            Ok(uri)
                if uri.authority.userinfo.username == "guest"
                    && uri.authority.userinfo.password == "guest" =>
            {
                self.url.clone()
            }
            _ => without_password(&self.url),
        }
    }
}

/// The `channel` of errors that concern the connection rather than one channel.
pub(super) const CONNECTION: &str = "(broker connection)";

/// The host of `url` if it is a literal IPv4 or IPv6 address.
fn literal_ip_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, _) = bracketed.split_once(']')?;
        return host.parse::<Ipv6Addr>().ok().map(|ip| ip.to_string());
    }
    let host = host_port.split(':').next()?;
    host.parse::<Ipv4Addr>().ok().map(|ip| ip.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn literal_ips_survive_parsing() {
        let config = AmqpConfig::default().url("amqp://u:p@10.1.2.3:5673/%2f");
        let uri = config.amqp_uri().unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "/");
        let v6 = AmqpConfig::default().url("amqp://[::1]:5672/%2f");
        assert_eq!(v6.amqp_uri().unwrap().authority.host, "::1");
        let named = AmqpConfig::default().url("amqp://rabbit.lan/%2f");
        assert_eq!(named.amqp_uri().unwrap().authority.host, "rabbit.lan");
    }

    #[test]
    fn heartbeat_from_config_unless_in_url() {
        let config = AmqpConfig::default().heartbeat(Duration::from_secs(7));
        assert_eq!(config.amqp_uri().unwrap().query.heartbeat, Some(7));
        let config = config.url("amqp://127.0.0.1/%2f?heartbeat=3");
        assert_eq!(config.amqp_uri().unwrap().query.heartbeat, Some(3));
    }

    #[test]
    fn bad_url_is_a_clear_error() {
        let err = AmqpConfig::default()
            .url("http://u:secret@x")
            .amqp_uri()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("invalid broker URL"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn advertised_url_hides_real_passwords() {
        assert_eq!(AmqpConfig::default().advertised(), DEFAULT_URL);
        let guest = AmqpConfig::default().url("amqp://guest:guest@10.0.0.2:5672/%2f");
        assert_eq!(guest.advertised(), "amqp://guest:guest@10.0.0.2:5672/%2f");
        let secret =
            AmqpConfig::default().url("amqp://kraken:s3cr3t@10.0.0.2:5672/prod?heartbeat=5");
        assert_eq!(
            secret.advertised(),
            "amqp://kraken@10.0.0.2:5672/prod?heartbeat=5"
        );
        let explicit = secret.advertise_url("amqp://kraken:s3cr3t@rabbit.lan/prod");
        assert_eq!(
            explicit.advertised(),
            "amqp://kraken:s3cr3t@rabbit.lan/prod"
        );
        assert!(!format!("{explicit:?}").contains("s3cr3t"));
    }
}
