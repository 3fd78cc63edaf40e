//! Finding an orchestrator on the LAN.
//!
//! An orchestrator [`advertise`]s its API as an mDNS service ([`SERVICE_TYPE`]). A node
//! looking for it ([`find_orchestrator`]) tries, in order: mDNS; the addresses it was
//! given; and, only when asked to, every host of one /24 subnet. An address counts as an
//! orchestrator when `GET /ping` answers `pong` ([`probe`]).
//!
//! Discovery only says where an orchestrator is; whether it belongs to the same platform is
//! settled afterwards with the join secret ([`crate::membership`]).

use crate::model::NodeId;
use futures::StreamExt;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The mDNS service type under which orchestrators advertise their API.
pub const SERVICE_TYPE: &str = "_kraken._tcp.local.";

/// TXT record keys of an advertisement.
const TXT_NODE: &str = "node";
const TXT_EPOCH: &str = "epoch";

/// Probes in flight at once during a subnet scan started by [`find_orchestrator`].
const SCAN_PARALLEL: usize = 64;

/// The most of a `/ping` answer that is read: `pong` is 4 bytes, anything longer is not it.
const PING_BODY_LIMIT: usize = 64;

/// How long [`browse_mdns`] waits for its daemon to stop before leaving it to finish alone.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// What can go wrong with mDNS. Probing and scanning do not fail: an address that does not
/// answer is simply not an orchestrator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The mDNS daemon (its thread and sockets) could not start.
    #[error("cannot start mDNS (is there a network interface with multicast?): {source}")]
    Daemon {
        /// Why.
        #[source]
        source: mdns_sd::Error,
    },
    /// The orchestrator's service could not be registered.
    #[error("cannot advertise orchestrator {node} on mDNS as {service}: {source}")]
    Advertise {
        /// The orchestrator.
        node: NodeId,
        /// The service type.
        service: &'static str,
        /// Why.
        #[source]
        source: mdns_sd::Error,
    },
    /// Browsing for orchestrators could not start.
    #[error("cannot browse mDNS for {service}: {source}")]
    Browse {
        /// The service type.
        service: &'static str,
        /// Why.
        #[source]
        source: mdns_sd::Error,
    },
    /// The blocking task that starts the mDNS daemon did not finish.
    #[error("the mDNS start task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// An orchestrator's service, advertised on mDNS for as long as this value lives. Dropping
/// it sends the mDNS goodbye and stops the daemon's thread, without waiting for either.
pub struct Advertisement {
    daemon: ServiceDaemon,
    /// The registered instance's full name, needed to unregister it.
    fullname: String,
}

impl fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Advertisement")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        // Both calls only queue a command for the daemon's thread, which handles them in
        // order: the goodbye goes out before it exits.
        if let Err(err) = self.daemon.unregister(&self.fullname) {
            tracing::debug!(cause = %err, service = %self.fullname, "mDNS unregister failed");
        }
        if let Err(err) = self.daemon.shutdown() {
            tracing::debug!(cause = %err, "mDNS daemon shutdown failed");
        }
    }
}

/// Advertises the orchestrator `node`'s API, at `host_ip:api_port`, as an instance of
/// [`SERVICE_TYPE`] named after the node, with TXT records `node=<id>` and `epoch=<n>`.
/// An unspecified `host_ip` (`0.0.0.0`, `::`) advertises every address of this machine.
///
/// Starting the daemon binds sockets and spawns a thread: quick, but call it from a
/// blocking context if that matters.
pub fn advertise(
    node: &NodeId,
    host_ip: IpAddr,
    api_port: u16,
    epoch: u64,
) -> Result<Advertisement, DiscoveryError> {
    let advertise_error = |source| DiscoveryError::Advertise {
        node: node.clone(),
        service: SERVICE_TYPE,
        source,
    };
    let epoch_text = epoch.to_string();
    let properties = [(TXT_NODE, node.as_str()), (TXT_EPOCH, epoch_text.as_str())];
    let host_name = format!("{}.local.", host_label(node));
    let info = if host_ip.is_unspecified() {
        ServiceInfo::new(
            SERVICE_TYPE,
            node.as_str(),
            &host_name,
            (),
            api_port,
            &properties[..],
        )
        .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            node.as_str(),
            &host_name,
            host_ip,
            api_port,
            &properties[..],
        )
    }
    .map_err(advertise_error)?;
    let fullname = info.get_fullname().to_owned();
    let daemon = ServiceDaemon::new().map_err(|source| DiscoveryError::Daemon { source })?;
    if let Err(err) = daemon.register(info) {
        let _ = daemon.shutdown();
        return Err(advertise_error(err));
    }
    tracing::info!(service = %fullname, ip = %host_ip, port = api_port, epoch, "advertising the orchestrator on mDNS");
    Ok(Advertisement { daemon, fullname })
}

/// A DNS label for the advertised host name: node ids may hold `.` and `_`, labels may not.
fn host_label(node: &NodeId) -> String {
    let label: String = node
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    label.trim_matches('-').to_owned()
}

/// An orchestrator that was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where its API listens, as `host:port` (IPv6 hosts in brackets).
    pub api_addr: String,
    /// Its node id, when the way it was found tells it (mDNS does).
    pub node: Option<NodeId>,
    /// How it was found.
    pub via: Via,
}

/// How an orchestrator was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Its mDNS advertisement.
    Mdns,
    /// An address given in the configuration answered.
    Configured,
    /// The subnet scan reached it.
    Scan,
}

/// Browses mDNS for [`SERVICE_TYPE`] during `wait` and returns the services resolved by
/// then, newest epoch first; an IPv4 address is preferred when a service has several.
/// Services withdrawn during the wait are left out.
pub async fn browse_mdns(wait: Duration) -> Result<Vec<Found>, DiscoveryError> {
    let deadline = tokio::time::Instant::now() + wait;
    let daemon = tokio::task::spawn_blocking(ServiceDaemon::new)
        .await
        .map_err(DiscoveryError::Task)?
        .map_err(|source| DiscoveryError::Daemon { source })?;
    let events = match daemon.browse(SERVICE_TYPE) {
        Ok(events) => events,
        Err(source) => {
            let _ = daemon.shutdown();
            return Err(DiscoveryError::Browse {
                service: SERVICE_TYPE,
                source,
            });
        }
    };
    // Keyed by instance name: a service is resolved again as more of its records arrive.
    let mut services: BTreeMap<String, (u64, Found)> = BTreeMap::new();
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        match event {
            ServiceEvent::ServiceResolved(service) => match found_from_mdns(&service) {
                Some(found) => {
                    tracing::debug!(service = %service.fullname, addr = %found.api_addr, "mDNS: resolved an orchestrator");
                    services.insert(service.fullname.clone(), (epoch_of(&service), found));
                }
                None => {
                    tracing::debug!(service = %service.fullname, "mDNS: a service without a usable address")
                }
            },
            ServiceEvent::ServiceRemoved(_, fullname) => {
                services.remove(&fullname);
            }
            _ => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    if let Ok(status) = daemon.shutdown() {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, status.recv_async()).await;
    }
    let mut found: Vec<(u64, Found)> = services.into_values().collect();
    found.sort_by_key(|(epoch, _)| std::cmp::Reverse(*epoch));
    Ok(found.into_iter().map(|(_, found)| found).collect())
}

fn epoch_of(service: &ResolvedService) -> u64 {
    service
        .get_property_val_str(TXT_EPOCH)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

fn found_from_mdns(service: &ResolvedService) -> Option<Found> {
    let addresses = service.get_addresses().iter().map(|ip| ip.to_ip_addr());
    let ip = preferred_address(addresses)?;
    Some(Found {
        api_addr: host_port(ip, service.get_port()),
        node: service
            .get_property_val_str(TXT_NODE)
            .and_then(|id| NodeId::parse(id).ok()),
        via: Via::Mdns,
    })
}

/// The address to use among a service's: IPv4 first, routable before link-local, the
/// lowest of a kind for a stable choice. IPv6 link-local addresses need an interface to be
/// used and are skipped.
fn preferred_address(addresses: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
    let rank = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) if !v4.is_link_local() && !v4.is_loopback() => Some(0),
        IpAddr::V4(_) => Some(1),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => None,
        IpAddr::V6(v6) if !v6.is_loopback() => Some(2),
        IpAddr::V6(_) => Some(3),
    };
    addresses
        .into_iter()
        .filter_map(|ip| rank(&ip).map(|r| (r, ip)))
        .min()
        .map(|(_, ip)| ip)
}

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Whether a Kraken API answers at `addr` (`host:port`, an `http://` prefix is allowed):
/// `GET http://<addr>/ping` must answer 200 with the body `pong` within `timeout`.
/// What it finds is marked [`Via::Configured`], with no node id.
pub async fn probe(addr: &str, timeout: Duration) -> Option<Found> {
    let client = http_client(timeout)?;
    probe_with(&client, addr).await
}

/// A client for probes: no proxy (these are LAN addresses), a bound on each whole request.
fn http_client(timeout: Duration) -> Option<reqwest::Client> {
    match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
    {
        Ok(client) => Some(client),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot build an HTTP client to probe for an orchestrator");
            None
        }
    }
}

async fn probe_with(client: &reqwest::Client, addr: &str) -> Option<Found> {
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    if addr.is_empty() {
        return None;
    }
    let mut response = match client.get(format!("http://{addr}/ping")).send().await {
        Ok(response) => response,
        Err(err) => {
            tracing::trace!(addr, cause = %err, "probe: no answer");
            return None;
        }
    };
    if response.status() != reqwest::StatusCode::OK {
        tracing::debug!(addr, status = %response.status(), "probe: not a Kraken API");
        return None;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > PING_BODY_LIMIT {
            break;
        }
    }
    if body.trim_ascii() != b"pong" {
        tracing::debug!(addr, "probe: /ping did not answer pong");
        return None;
    }
    Some(Found {
        api_addr: addr.to_owned(),
        node: None,
        via: Via::Configured,
    })
}

/// Probes port `port` of every host `a.b.c.1` to `a.b.c.254` of `ip`'s /24 subnet, at most
/// `parallel` at a time, each bounded by `timeout`; returns those that answer, in address
/// order, marked [`Via::Scan`].
pub async fn scan_subnet(
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
    parallel: usize,
) -> Vec<Found> {
    let Some(client) = http_client(timeout) else {
        return Vec::new();
    };
    let [a, b, c, _] = ip.octets();
    let client = &client;
    let mut found: Vec<(u8, Found)> = futures::stream::iter(1..=254u8)
        .map(|host| async move {
            let addr = format!("{a}.{b}.{c}.{host}:{port}");
            probe_with(client, &addr).await.map(|found| {
                (
                    host,
                    Found {
                        via: Via::Scan,
                        ..found
                    },
                )
            })
        })
        .buffer_unordered(parallel.max(1))
        .filter_map(std::future::ready)
        .collect()
        .await;
    found.sort_by_key(|(host, _)| *host);
    found.into_iter().map(|(_, found)| found).collect()
}

/// Where [`find_orchestrator`] looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Whether to browse mDNS first.
    pub mdns: bool,
    /// How long to listen for mDNS answers.
    pub mdns_wait: Duration,
    /// Addresses (`host:port`) to probe, in order, when mDNS finds nothing: for networks
    /// where multicast does not pass.
    pub addresses: Vec<String>,
    /// A /24 subnet (any address in it) and API port to scan as a last resort. Off unless
    /// set: a scan knocks on every host of the network.
    pub scan: Option<(Ipv4Addr, u16)>,
    /// How long one probe of an address may take.
    pub probe_timeout: Duration,
}

impl Default for DiscoveryConfig {
    /// mDNS for 1.5 s, no addresses, no scan, 1 s per probe.
    fn default() -> Self {
        DiscoveryConfig {
            mdns: true,
            mdns_wait: Duration::from_millis(1500),
            addresses: Vec::new(),
            scan: None,
            probe_timeout: Duration::from_secs(1),
        }
    }
}

/// Looks for an orchestrator as `config` says, in order: mDNS (if enabled), each configured
/// address, then the subnet scan (if configured). The first that answers `/ping` wins; an
/// mDNS advertisement is probed too, so a stale one (a crashed orchestrator) is passed over.
pub async fn find_orchestrator(config: &DiscoveryConfig) -> Option<Found> {
    if config.mdns {
        tracing::info!(
            service = SERVICE_TYPE,
            wait_ms = config.mdns_wait.as_millis() as u64,
            "looking for an orchestrator on mDNS"
        );
        match browse_mdns(config.mdns_wait).await {
            Ok(candidates) => {
                if candidates.is_empty() {
                    tracing::info!("no orchestrator advertised on mDNS");
                }
                for candidate in candidates {
                    if probe(&candidate.api_addr, config.probe_timeout)
                        .await
                        .is_some()
                    {
                        tracing::info!(addr = %candidate.api_addr, node = ?candidate.node.as_ref().map(NodeId::as_str), "found an orchestrator on mDNS");
                        return Some(candidate);
                    }
                    tracing::info!(addr = %candidate.api_addr, "an orchestrator advertised on mDNS does not answer");
                }
            }
            Err(err) => tracing::warn!(cause = %err, "mDNS discovery failed"),
        }
    }
    for addr in &config.addresses {
        tracing::info!(addr = %addr, "probing a configured orchestrator address");
        if let Some(found) = probe(addr, config.probe_timeout).await {
            tracing::info!(addr = %found.api_addr, "found an orchestrator at a configured address");
            return Some(found);
        }
        tracing::info!(addr = %addr, "no Kraken API answers there");
    }
    if let Some((ip, port)) = config.scan {
        let [a, b, c, _] = ip.octets();
        tracing::info!(subnet = %format!("{a}.{b}.{c}.0/24"), port, "scanning the subnet for an orchestrator");
        if let Some(found) = scan_subnet(ip, port, config.probe_timeout, SCAN_PARALLEL)
            .await
            .into_iter()
            .next()
        {
            tracing::info!(addr = %found.api_addr, "found an orchestrator by scanning");
            return Some(found);
        }
        tracing::info!("no orchestrator answered the subnet scan");
    }
    None
}

#[cfg(test)]
mod tests;
