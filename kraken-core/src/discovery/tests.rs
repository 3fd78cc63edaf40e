#![allow(clippy::unwrap_used)]
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP server on `ip:port` (port 0: any) answering every request with
/// `status` and `body`. Returns its port.
async fn serve(ip: Ipv4Addr, port: u16, status: &'static str, body: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const TIMEOUT: Duration = Duration::from_millis(500);

/// A port on which nothing listens: bound without listening, so that connections are
/// refused and no other test gets it while the socket lives.
fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((LOCALHOST, 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test]
async fn probe_finds_a_kraken_api() {
    let port = serve(LOCALHOST, 0, "200 OK", "pong").await;
    let addr = format!("127.0.0.1:{port}");
    let found = probe(&addr, TIMEOUT).await.unwrap();
    assert_eq!(
        found,
        Found {
            api_addr: addr.clone(),
            node: None,
            via: Via::Configured
        }
    );
    let found = probe(&format!("http://{addr}/"), TIMEOUT).await.unwrap();
    assert_eq!(found.api_addr, addr);
}

#[tokio::test]
async fn probe_ignores_what_is_not_a_kraken_api() {
    let other = serve(LOCALHOST, 0, "200 OK", "hello").await;
    assert_eq!(probe(&format!("127.0.0.1:{other}"), TIMEOUT).await, None);
    let error = serve(LOCALHOST, 0, "500 Internal Server Error", "pong").await;
    assert_eq!(probe(&format!("127.0.0.1:{error}"), TIMEOUT).await, None);
    let long = serve(LOCALHOST, 0, "200 OK", "pong pong pong").await;
    assert_eq!(probe(&format!("127.0.0.1:{long}"), TIMEOUT).await, None);
    let (_socket, closed) = closed_port();
    assert_eq!(probe(&format!("127.0.0.1:{closed}"), TIMEOUT).await, None);
    assert_eq!(probe("", TIMEOUT).await, None);
    assert_eq!(probe("not an address at all", TIMEOUT).await, None);
}

#[tokio::test]
async fn probe_gives_up_after_its_timeout() {
    // Accepts connections but never answers.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    assert_eq!(
        probe(&format!("127.0.0.1:{port}"), Duration::from_millis(200)).await,
        None
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn find_orchestrator_without_mdns_picks_the_configured_address() {
    let other = serve(LOCALHOST, 0, "200 OK", "hello").await;
    let kraken = serve(LOCALHOST, 0, "200 OK", "pong").await;
    let (_socket, closed) = closed_port();
    let config = DiscoveryConfig {
        mdns: false,
        addresses: vec![
            format!("127.0.0.1:{closed}"),
            format!("127.0.0.1:{other}"),
            format!("127.0.0.1:{kraken}"),
        ],
        probe_timeout: TIMEOUT,
        ..DiscoveryConfig::default()
    };
    let found = find_orchestrator(&config).await.unwrap();
    assert_eq!(found.api_addr, format!("127.0.0.1:{kraken}"));
    assert_eq!(found.via, Via::Configured);

    let config = DiscoveryConfig {
        addresses: vec![format!("127.0.0.1:{other}")],
        ..config
    };
    assert_eq!(
        find_orchestrator(&config).await,
        None,
        "no scan unless asked"
    );
}

#[test]
fn the_default_configuration() {
    let config = DiscoveryConfig::default();
    assert!(config.mdns);
    assert_eq!(config.mdns_wait, Duration::from_millis(1500));
    assert!(config.addresses.is_empty());
    assert_eq!(config.scan, None);
    assert_eq!(config.probe_timeout, Duration::from_secs(1));
}

#[tokio::test]
async fn scanning_finds_exactly_the_host_that_answers() {
    let port = serve(LOCALHOST, 0, "200 OK", "pong").await;
    let found = scan_subnet(Ipv4Addr::new(127, 0, 0, 77), port, TIMEOUT, 64).await;
    assert_eq!(
        found,
        vec![Found {
            api_addr: format!("127.0.0.1:{port}"),
            node: None,
            via: Via::Scan
        }]
    );
}

#[tokio::test]
async fn scanning_finds_every_host_that_answers_in_order() {
    // Linux routes all of 127.0.0.0/8 to the loopback interface. 127.0.1.0/24 keeps this
    // test apart from the others, which serve on 127.0.0.1.
    let host = |n| Ipv4Addr::new(127, 0, 1, n);
    let port = serve(host(9), 0, "200 OK", "pong").await;
    serve(host(3), port, "200 OK", "pong").await;
    serve(host(5), port, "200 OK", "nope").await;
    let found = scan_subnet(host(200), port, TIMEOUT, 16).await;
    let addrs: Vec<_> = found.iter().map(|f| f.api_addr.clone()).collect();
    assert_eq!(
        addrs,
        [format!("127.0.1.3:{port}"), format!("127.0.1.9:{port}")]
    );
}

#[tokio::test]
async fn find_orchestrator_scans_when_asked() {
    let port = serve(LOCALHOST, 0, "200 OK", "pong").await;
    let (_socket, closed) = closed_port();
    let config = DiscoveryConfig {
        mdns: false,
        addresses: vec![format!("127.0.0.1:{closed}")],
        scan: Some((LOCALHOST, port)),
        probe_timeout: TIMEOUT,
        ..DiscoveryConfig::default()
    };
    let found = find_orchestrator(&config).await.unwrap();
    assert_eq!(found.api_addr, format!("127.0.0.1:{port}"));
    assert_eq!(found.via, Via::Scan);
}

#[test]
fn ipv4_addresses_are_preferred() {
    let v4: IpAddr = "192.168.1.10".parse().unwrap();
    let v4_link: IpAddr = "169.254.3.4".parse().unwrap();
    let v6: IpAddr = "fd00::2".parse().unwrap();
    let v6_link: IpAddr = "fe80::1".parse().unwrap();
    assert_eq!(preferred_address([v6, v4_link, v4, v6_link]), Some(v4));
    assert_eq!(preferred_address([v6, v4_link]), Some(v4_link));
    assert_eq!(preferred_address([v6_link, v6]), Some(v6));
    assert_eq!(preferred_address([v6_link]), None);
    assert_eq!(host_port(v6, 8000), "[fd00::2]:8000");
    assert_eq!(host_port(v4, 8000), "192.168.1.10:8000");
}

#[test]
fn host_labels_are_dns_safe() {
    let node = NodeId::parse("node_1.lab").unwrap();
    assert_eq!(host_label(&node), "node-1-lab");
}

/// The address of a non-loopback interface, which mDNS needs.
fn lan_ip() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the outgoing address.
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(224, 0, 0, 251), 5353)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertisement_is_found_by_browsing() {
    let ip = lan_ip().expect("a network interface with an address");
    let node = NodeId::random();
    let port = serve(LOCALHOST, 0, "200 OK", "pong").await;
    let advertisement = advertise(&node, ip, port, 42).unwrap();
    let found = browse_mdns(Duration::from_secs(3)).await.unwrap();
    let ours: Vec<_> = found
        .iter()
        .filter(|f| f.node.as_ref() == Some(&node))
        .collect();
    assert_eq!(
        ours,
        [&Found {
            api_addr: host_port(ip, port),
            node: Some(node.clone()),
            via: Via::Mdns
        }],
        "found: {found:?}"
    );
    drop(advertisement);
}
