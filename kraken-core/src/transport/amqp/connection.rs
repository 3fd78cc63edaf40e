//! The connection to the broker and the task that keeps it alive.
//!
//! A [`Session`] is one AMQP connection with the channels the transport publishes and
//! declares on. The supervisor task owns the current session: when the connection is lost
//! it withdraws the session (publishers then wait), reconnects with exponential backoff and
//! jitter, declares the dead-letter topology and every channel declared so far again, and
//! hands out the new session. Subscriptions notice the loss on their own consumer and
//! subscribe again on the next session.

use super::config::{AmqpConfig, CONNECTION};
use crate::transport::TransportError;
pub(super) use crate::util::{Backoff, lock};
use crate::wire::{ChannelKind, ChannelSpec};
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicCancelOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the supervisor looks at the connection state in case lapin reported no event.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Longest `delete` waits for the broker to cancel one local consumer.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What `delete` needs to end a subscription of this transport.
pub(super) struct SubscriptionControl {
    /// Cancelled to end the subscription (a child of the transport's shutdown).
    pub stop: CancellationToken,
    /// The channel and tag of its registered consumer, if any; whoever takes them cancels
    /// the consumer.
    pub active: Mutex<Option<(Channel, ShortString)>>,
}

impl SubscriptionControl {
    /// Cancels the registered consumer, if the subscription has not done it yet.
    async fn cancel_consumer(&self) {
        let Some((channel, tag)) = lock(&self.active).take() else {
            return;
        };
        let cancelling = channel.basic_cancel(tag, BasicCancelOptions::default());
        match tokio::time::timeout(STOP_WAIT, cancelling).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(cause = %err, "could not cancel a consumer"),
            Err(_) => tracing::debug!("cancelling a consumer took too long"),
        }
    }
}

/// State shared by the transport handles, the supervisor and the subscription tasks.
pub(super) struct Shared {
    /// The configuration, as given.
    pub config: AmqpConfig,
    /// The parsed URL.
    uri: AMQPUri,
    /// The current session; `None` while reconnecting.
    session: watch::Sender<Option<Arc<Session>>>,
    /// Cancelled by `close` or when the last handle is dropped: everything stops.
    pub shutdown: CancellationToken,
    /// Every channel declared through this transport, declared again after a reconnect.
    known: Mutex<HashSet<ChannelSpec>>,
    /// The live subscriptions, by channel name, so `delete` can end them.
    subscriptions: Mutex<HashMap<String, Vec<Weak<SubscriptionControl>>>>,
    /// The runtime, for settling dropped deliveries from `Drop`.
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Connects once (bounded by the connect timeout) and starts the supervisor.
    pub async fn start(config: AmqpConfig) -> Result<Arc<Shared>, TransportError> {
        let uri = config.amqp_uri()?;
        let (session, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            config,
            uri,
            session,
            shutdown: CancellationToken::new(),
            known: Mutex::new(HashSet::new()),
            subscriptions: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        let first = shared.open_session(1).await?;
        shared.session.send_replace(Some(Arc::clone(&first)));
        tokio::spawn(supervise(Arc::clone(&shared), first));
        Ok(shared)
    }

    /// Full name of a channel's queue or exchange.
    pub fn entity_name(&self, spec: &ChannelSpec) -> Result<ShortString, TransportError> {
        short(format!("{}.{}", self.config.prefix, spec.name), &spec.name)
    }

    /// Name of the dead-letter exchange and queue.
    pub fn dead_letter_name(&self) -> String {
        format!("{}.dead", self.config.prefix)
    }

    /// The current live session, waiting for a reconnect if needed. Fails only on shutdown;
    /// callers bound the wait.
    pub async fn current_session(&self) -> Result<Arc<Session>, TransportError> {
        // The usual case, without registering for changes.
        if !self.shutdown.is_cancelled()
            && let Some(session) = self.session.borrow().as_ref()
            && session.is_alive()
        {
            return Ok(Arc::clone(session));
        }
        let mut rx = self.session.subscribe();
        loop {
            if self.shutdown.is_cancelled() {
                return Err(TransportError::Closed);
            }
            if let Some(session) = rx.borrow_and_update().clone() {
                if session.is_alive() {
                    return Ok(session);
                }
                session.check();
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(TransportError::Closed) },
                () = self.shutdown.cancelled() => return Err(TransportError::Closed),
                // The session may die without the supervisor having noticed yet.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Whether a live session exists right now.
    pub fn connected(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_some_and(|session| session.is_alive())
    }

    /// Remembers a declared channel, to declare it again after a reconnect.
    pub fn remember(&self, spec: &ChannelSpec) {
        let mut known = lock(&self.known);
        if !known.contains(spec) {
            known.insert(spec.clone());
        }
    }

    /// Forgets a deleted channel.
    pub fn forget(&self, spec: &ChannelSpec) {
        lock(&self.known).remove(spec);
    }

    /// Registers a new subscription of `channel`.
    pub fn register_subscription(&self, channel: &str) -> Arc<SubscriptionControl> {
        let control = Arc::new(SubscriptionControl {
            stop: self.shutdown.child_token(),
            active: Mutex::new(None),
        });
        let mut subscriptions = lock(&self.subscriptions);
        subscriptions.retain(|_, controls| {
            controls.retain(|c| c.strong_count() > 0);
            !controls.is_empty()
        });
        subscriptions
            .entry(channel.to_owned())
            .or_default()
            .push(Arc::downgrade(&control));
        control
    }

    /// Ends every subscription of `channel` made through this transport and cancels their
    /// consumers (waiting for the broker to confirm each, a little).
    pub async fn stop_subscriptions(&self, channel: &str) {
        let controls: Vec<Arc<SubscriptionControl>> = lock(&self.subscriptions)
            .remove(channel)
            .unwrap_or_default()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for control in &controls {
            control.stop.cancel();
        }
        futures::future::join_all(controls.iter().map(|c| c.cancel_consumer())).await;
    }

    /// Opens a connection with its channels and dead-letter topology.
    async fn open_session(&self, generation: u64) -> Result<Arc<Session>, TransportError> {
        let after = self.config.connect_timeout;
        match tokio::time::timeout(after, self.try_open_session(generation)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                channel: CONNECTION.to_owned(),
                after,
            }),
        }
    }

    async fn try_open_session(&self, generation: u64) -> Result<Arc<Session>, TransportError> {
        let broker = |err: lapin::Error| TransportError::Broker {
            channel: CONNECTION.to_owned(),
            reason: err.to_string(),
        };
        let name = format!("kraken ({})", self.config.prefix);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(broker)?;
        let events = Box::pin(connection.events_listener());
        let session = Arc::new(Session {
            generation,
            connection,
            events: Mutex::new(Some(events)),
            publisher: Slot::new(true),
            admin: Slot::new(false),
            declared: Mutex::new(HashSet::new()),
            lost: CancellationToken::new(),
            opened: Instant::now(),
        });
        session
            .declare_dead_letters(self)
            .await
            .map_err(|failure| failure.into_error(CONNECTION))?;
        Ok(session)
    }

    /// Declares what a reconnected session needs beyond the dead-letter topology.
    async fn redeclare_known(&self, session: &Session) {
        let known: Vec<ChannelSpec> = lock(&self.known).iter().cloned().collect();
        for spec in known {
            if let Err(failure) = session.declare(self, &spec, true).await {
                tracing::warn!(channel = %spec, cause = %failure.reason(), "could not declare a channel again after reconnecting");
            }
        }
    }
}

/// A name as AMQP needs it: at most 255 bytes.
pub(super) fn short(name: String, channel: &str) -> Result<ShortString, TransportError> {
    let len = name.len();
    ShortString::try_new(name).map_err(|_| TransportError::Broker {
        channel: channel.to_owned(),
        reason: format!("the AMQP name would be {len} bytes long; at most 255 are allowed"),
    })
}

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// One AMQP connection and the channels the transport shares on it.
pub(super) struct Session {
    /// Counts connections, for logs.
    pub generation: u64,
    connection: Connection,
    /// Connection events, taken by the supervisor.
    events: Mutex<Option<Events>>,
    /// The channel publishes go through, in confirm mode.
    publisher: Slot,
    /// The channel declarations and deletions go through: a refused declaration closes
    /// its channel, which must not take in-flight publishes with it.
    admin: Slot,
    /// Channels declared on this connection, so a publish declares only once.
    declared: Mutex<HashSet<ChannelSpec>>,
    /// Cancelled when the connection is known to be lost.
    lost: CancellationToken,
    /// When it was opened, to reset the reconnect backoff after a stable period.
    opened: Instant,
}

impl Session {
    /// Whether the connection is up.
    pub fn is_alive(&self) -> bool {
        !self.lost.is_cancelled() && self.connection.status().connected()
    }

    /// Tells the supervisor if the connection went down.
    pub fn check(&self) {
        if !self.connection.status().connected() {
            self.lost.cancel();
        }
    }

    /// A new channel on this connection.
    pub async fn open_channel(&self) -> Result<Channel, Failure> {
        self.connection
            .create_channel()
            .await
            .map_err(|err| self.failure(err))
    }

    /// The shared publishing channel (confirm mode).
    pub async fn publisher(&self) -> Result<Channel, Failure> {
        self.publisher
            .get(&self.connection)
            .await
            .map_err(|err| self.failure(err))
    }

    /// Drops the publishing channel after it failed, so the next publish opens another.
    pub fn publisher_failed(&self, channel: &Channel) {
        self.publisher.reset(channel);
    }

    /// Classifies a lapin error: a refusal by the broker (soft error on a live connection)
    /// or trouble with the connection or channel, worth retrying.
    pub fn failure(&self, err: lapin::Error) -> Failure {
        self.check();
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if self.is_alive() => match amqp.kind() {
                AMQPErrorKind::Soft(soft) => Failure::Refused {
                    code: soft.clone(),
                    reason: err.to_string(),
                },
                AMQPErrorKind::Hard(_) => Failure::Transient(err.to_string()),
            },
            _ => Failure::Transient(err.to_string()),
        }
    }

    /// Whether `spec` was declared on this connection.
    pub fn is_declared(&self, spec: &ChannelSpec) -> bool {
        lock(&self.declared).contains(spec)
    }

    /// Forgets that `spec` was declared (it vanished, or was deleted).
    pub fn undeclared(&self, spec: &ChannelSpec) {
        lock(&self.declared).remove(spec);
    }

    /// Declares a channel's queue or exchange, unless already done on this connection
    /// (`force` declares anyway, e.g. when subscribing after the queue may have been
    /// deleted).
    pub async fn declare(
        &self,
        shared: &Shared,
        spec: &ChannelSpec,
        force: bool,
    ) -> Result<(), Failure> {
        if !force && self.is_declared(spec) {
            return Ok(());
        }
        let name = shared
            .entity_name(spec)
            .map_err(|err| Failure::Invalid(err.to_string()))?;
        match spec.kind {
            ChannelKind::Queue => {
                self.declare_queue(name, queue_arguments(shared), spec)
                    .await?;
            }
            ChannelKind::Broadcast => {
                let channel = self.admin().await?;
                if let Err(err) = channel
                    .exchange_declare(
                        name,
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                {
                    self.admin.reset(&channel);
                    return Err(self.failure(err));
                }
            }
        }
        lock(&self.declared).insert(spec.clone());
        shared.remember(spec);
        Ok(())
    }

    /// Declares a durable quorum queue. A queue that already exists with other arguments
    /// (a node configured with another poison limit or expiry) is used as it is.
    async fn declare_queue(
        &self,
        name: ShortString,
        arguments: FieldTable,
        spec: &ChannelSpec,
    ) -> Result<(), Failure> {
        let channel = self.admin().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let Err(err) = channel
            .queue_declare(name.clone(), options, arguments)
            .await
        else {
            return Ok(());
        };
        self.admin.reset(&channel);
        match self.failure(err) {
            Failure::Refused {
                code: AMQPSoftError::PRECONDITIONFAILED,
                reason,
            } => {
                tracing::warn!(channel = %spec, queue = %name, cause = %reason, "queue exists with other arguments (another poison limit, expiry or queue type); using it as it is");
                let channel = self.admin().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                match channel
                    .queue_declare(name, passive, FieldTable::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(err) => {
                        self.admin.reset(&channel);
                        Err(self.failure(err))
                    }
                }
            }
            other => Err(other),
        }
    }

    /// Declares the dead-letter exchange and queue every queue channel points at.
    async fn declare_dead_letters(&self, shared: &Shared) -> Result<(), Failure> {
        let dead = shared.dead_letter_name();
        let name = short(dead.clone(), &dead).map_err(|err| Failure::Invalid(err.to_string()))?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let channel = self.admin().await?;
        if let Err(err) = channel
            .exchange_declare(
                name.clone(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
        {
            self.admin.reset(&channel);
            return Err(self.failure(err));
        }
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(shared.config.dead_letter_limit)),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        if let Some(expiry) = shared.config.queue_expiry {
            arguments.insert("x-expires".into(), millis(expiry));
        }
        let spec = ChannelSpec {
            name: dead.into(),
            kind: ChannelKind::Queue,
        };
        self.declare_queue(name.clone(), arguments, &spec).await?;
        let channel = self.admin().await?;
        if let Err(err) = channel
            .queue_bind(
                name.clone(),
                name,
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            self.admin.reset(&channel);
            return Err(self.failure(err));
        }
        Ok(())
    }

    /// Number of messages waiting in the dead-letter queue.
    pub async fn dead_letter_count(&self, shared: &Shared) -> Result<u32, Failure> {
        let dead = shared.dead_letter_name();
        let name = short(dead.clone(), &dead).map_err(|err| Failure::Invalid(err.to_string()))?;
        let channel = self.admin().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(name, passive, FieldTable::default())
            .await
        {
            Ok(queue) => Ok(queue.message_count()),
            Err(err) => {
                self.admin.reset(&channel);
                Err(self.failure(err))
            }
        }
    }

    /// Deletes a queue channel's queue.
    pub async fn delete_queue(&self, shared: &Shared, spec: &ChannelSpec) -> Result<(), Failure> {
        let name = shared
            .entity_name(spec)
            .map_err(|err| Failure::Invalid(err.to_string()))?;
        self.undeclared(spec);
        let channel = self.admin().await?;
        match channel
            .queue_delete(name, lapin::options::QueueDeleteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => {
                self.admin.reset(&channel);
                match self.failure(err) {
                    // Already gone.
                    Failure::Refused {
                        code: AMQPSoftError::NOTFOUND,
                        ..
                    } => Ok(()),
                    other => Err(other),
                }
            }
        }
    }

    async fn admin(&self) -> Result<Channel, Failure> {
        self.admin
            .get(&self.connection)
            .await
            .map_err(|err| self.failure(err))
    }

    async fn close(&self) {
        if self.connection.status().connected() {
            let closing = self.connection.close(200, "OK".into());
            if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(5), closing).await {
                tracing::debug!(cause = %err, "closing the broker connection failed");
            }
        }
    }
}

/// Arguments of every queue channel's queue.
fn queue_arguments(shared: &Shared) -> FieldTable {
    let mut arguments = FieldTable::default();
    // Quorum queues count deliveries on the broker (`x-delivery-count`), so the poison
    // limit holds across consumer crashes and reconnects.
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(shared.dead_letter_name().into()),
    );
    // The broker dead-letters a message returned more than this many times: with
    // `max_deliveries - 1` it is delivered at most `max_deliveries` times, even when the
    // consumers die instead of rejecting it.
    let limit = shared.config.delivery_limit().saturating_sub(1);
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(limit)),
    );
    // Dead-letter without losing the message if the dead-letter queue is unavailable.
    arguments.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    if let Some(expiry) = shared.config.queue_expiry {
        arguments.insert("x-expires".into(), millis(expiry));
    }
    arguments
}

fn millis(duration: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// Why an operation on a session failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The connection or the channel broke: try again (on the next session if need be).
    Transient(String),
    /// The broker refused the operation on a live connection (404, 406, 403, ...).
    Refused {
        /// The AMQP reply code.
        code: AMQPSoftError,
        /// What the broker said.
        reason: String,
    },
    /// The request cannot work (e.g. a name longer than AMQP allows).
    Invalid(String),
}

impl Failure {
    /// What went wrong, for logs.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient(reason)
            | Failure::Refused { reason, .. }
            | Failure::Invalid(reason) => reason,
        }
    }

    /// The error a caller sees.
    pub fn into_error(self, channel: &str) -> TransportError {
        TransportError::Broker {
            channel: channel.to_owned(),
            reason: match self {
                Failure::Transient(reason)
                | Failure::Refused { reason, .. }
                | Failure::Invalid(reason) => reason,
            },
        }
    }
}

/// One lazily (re)opened channel, shared by concurrent users.
struct Slot {
    current: Mutex<Option<Channel>>,
    /// Held while opening, so concurrent users wait for one new channel.
    opening: tokio::sync::Mutex<()>,
    confirm: bool,
}

impl Slot {
    fn new(confirm: bool) -> Self {
        Slot {
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            confirm,
        }
    }

    fn live(&self) -> Option<Channel> {
        lock(&self.current)
            .as_ref()
            .filter(|channel| channel.status().connected())
            .cloned()
    }

    async fn get(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        if let Some(channel) = self.live() {
            return Ok(channel);
        }
        let _opening = self.opening.lock().await;
        if let Some(channel) = self.live() {
            return Ok(channel);
        }
        let channel = connection.create_channel().await?;
        if self.confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        *lock(&self.current) = Some(channel.clone());
        Ok(channel)
    }

    fn reset(&self, failed: &Channel) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|c| c.id() == failed.id()) {
            *current = None;
        }
    }
}

/// Keeps the connection alive until shutdown.
async fn supervise(shared: Arc<Shared>, mut session: Arc<Session>) {
    let mut backoff = Backoff::new(shared.config.reconnect_min, shared.config.reconnect_max);
    loop {
        wait_until_lost(&shared, &session).await;
        shared.session.send_replace(None);
        if shared.shutdown.is_cancelled() {
            session.close().await;
            tracing::debug!("broker connection closed");
            return;
        }
        tracing::warn!(
            generation = session.generation,
            "lost the broker connection; reconnecting"
        );
        if session.opened.elapsed() > shared.config.reconnect_max {
            backoff.reset();
        }
        let generation = session.generation + 1;
        drop(session);
        let mut attempt = 0u32;
        session = loop {
            attempt += 1;
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.shutdown.cancelled() => return,
            }
            let opened = tokio::select! {
                opened = shared.open_session(generation) => opened,
                () = shared.shutdown.cancelled() => return,
            };
            match opened {
                Ok(session) => {
                    let after = shared.config.connect_timeout;
                    if tokio::time::timeout(after, shared.redeclare_known(&session))
                        .await
                        .is_err()
                    {
                        // Publishing and subscribing declare what they use anyway.
                        tracing::warn!(?after, "declaring the known channels again took too long");
                    }
                    break session;
                }
                Err(err) => {
                    tracing::warn!(attempt, cause = %err, "reconnecting to the broker failed");
                }
            }
        };
        tracing::info!(generation, attempts = attempt, "reconnected to the broker");
        shared.session.send_replace(Some(Arc::clone(&session)));
    }
}

/// Returns when the session's connection is lost or the transport shuts down.
async fn wait_until_lost(shared: &Shared, session: &Session) {
    let mut events = lock(&session.events).take();
    let mut health = tokio::time::interval(HEALTH_CHECK);
    loop {
        let event = async {
            match events.as_mut() {
                Some(events) => events.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = session.lost.cancelled() => return,
            event = event => match event {
                Some(Event::Error(err)) => {
                    tracing::debug!(cause = %err, "broker connection reported an error");
                    session.check();
                }
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "the broker blocks publishing (resource alarm)");
                }
                Some(Event::ConnectionUnblocked) => {
                    tracing::info!("the broker accepts publishing again");
                }
                Some(_) => {}
                None => events = None,
            },
            _ = health.tick() => session.check(),
        }
    }
}
