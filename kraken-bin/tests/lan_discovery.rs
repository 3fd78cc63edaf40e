//! Discovery on a LAN: agents on hosts of their own (network namespaces on one bridge, so
//! multicast goes between them as on a switch). The first starts the platform on the
//! machine's broker and advertises itself on mDNS (`_kraken._tcp`); the second is given
//! nothing but the join secret: it finds the orchestrator with mDNS, joins it over HTTP
//! (learning the broker from it) and gets work.
#![allow(clippy::unwrap_used)]

#[path = "../../kraken-core/tests/support/git.rs"]
mod git;
#[path = "support/http.rs"]
mod http;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/processes.rs"]
mod processes;

use git::GitRepo;
use http::{create_deployment, graphql, http};
use netns::Lan;
use processes::{one_at_a_time, sleeper_manifest, wait_until};
use std::time::Duration;

#[test]
#[ignore = "needs rabbitmq and root (network namespaces)"]
fn an_agent_given_only_the_join_secret_finds_the_orchestrator_with_mdns_and_joins() {
    let _one = one_at_a_time();
    let lan = Lan::new(2);
    let (net, token) = (&lan.net, &lan.token);
    let (api0, ip0) = (net.api(0), net.host_ip(0));
    let first = lan.start(0, &["--amqp", &lan.amqp]);
    wait_until(Duration::from_secs(60), "the first node leads", || {
        http(&api0, "GET", &format!("/health/{}", first.id), None, None)
            .is_some_and(|(_, h)| h["accepting"] == true)
    });

    // No broker, no address: only the secret. The one address given answers nothing (a
    // closed port of the first host), so that, should mDNS fail, the agent gives up
    // instead of starting a platform of its own.
    let nowhere = format!("{ip0}:1");
    let second = lan.start(1, &["--orchestrator", &nowhere]);
    wait_until(Duration::from_secs(60), "the second node is listed", || {
        graphql(&api0, Some(token), "{ getNodes { id } }")
            .to_string()
            .contains(&second.id)
    });
    let log = lan.log_of(1);
    assert!(
        log.contains(&format!("found the orchestrator at {api0} (Mdns)")),
        "{log}"
    );
    assert!(
        !log.contains("starts the platform"),
        "the second node started a platform: {log}"
    );

    // It takes work like any node: two apps, one on each host (least-loaded placement).
    let repo = GitRepo::with_manifest(&sleeper_manifest("lan", ""));
    for _ in 0..2 {
        let v = graphql(&api0, Some(token), &create_deployment(&repo.url()));
        assert!(v["data"]["createDeployment"].is_string(), "{v}");
    }
    wait_until(
        Duration::from_secs(120),
        "one app Running on each host",
        || {
            let running = net.app_processes();
            running == vec![1, 1]
        },
    );
    drop((first, second));
}
