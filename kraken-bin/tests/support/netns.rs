//! Test hosts in network namespaces: a bridge on this machine (holding the address the
//! hosts reach the machine's RabbitMQ broker on) and one namespace per `kraken agent`.
//! Needs root.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

pub const API_PORT: u16 = 8000;

/// Runs a command; panics with its output when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command for clean-up: failures are only printed.
pub fn try_run(args: &[&str]) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        Err(err) => eprintln!("{args:?}: {err}"),
    }
}

/// The test hosts: a bridge on this machine and one namespace per node on it.
pub struct Net {
    pub bridge: String,
    pub subnet: String,
    pub hosts: Vec<String>,
    forward_rule: bool,
}

impl Net {
    pub fn new(n: usize) -> Net {
        // Names and addresses of their own for every network a test process makes: the
        // kernel tears a deleted namespace down in the background, so a new network must
        // not meet the remains of the last one.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("kp{}{}", pid % 10_000, made % 10);
        let mut net = Net {
            bridge: format!("{tag}br"),
            subnet: format!("10.213.{}", (pid + made * 97) % 250 + 1),
            hosts: Vec::new(),
            forward_rule: false,
        };
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}.1/24", net.subnet),
            "dev",
            &net.bridge,
        ]);
        run(&["ip", "link", "set", &net.bridge, "up"]);
        // Docker's FORWARD policy drops bridged traffic between the namespaces otherwise.
        run(&[
            "iptables",
            "-I",
            "FORWARD",
            "-i",
            &net.bridge,
            "-o",
            &net.bridge,
            "-j",
            "ACCEPT",
        ]);
        net.forward_rule = true;
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            let veth = format!("{tag}v{i}");
            run(&["ip", "netns", "add", &ns]);
            net.hosts.push(ns.clone());
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            run(&["ip", "link", "set", &veth, "master", &net.bridge]);
            run(&["ip", "link", "set", &veth, "up"]);
            let ip = format!("{}/24", net.host_ip(i));
            net.in_host(i, &["ip", "addr", "add", &ip, "dev", "eth0"]);
            net.in_host(i, &["ip", "link", "set", "eth0", "up"]);
            net.in_host(i, &["ip", "link", "set", "lo", "up"]);
        }
        net
    }

    /// The broker's address as the hosts reach it.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    pub fn host_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    pub fn api(&self, i: usize) -> String {
        format!("{}:{API_PORT}", self.host_ip(i))
    }

    pub fn wrapper(&self, i: usize) -> [&str; 4] {
        ["ip", "netns", "exec", &self.hosts[i]]
    }

    pub fn in_host(&self, i: usize, args: &[&str]) -> String {
        let mut all = self.wrapper(i).to_vec();
        all.extend_from_slice(args);
        run(&all)
    }

    /// Cuts host `i` off from everything but the test's requests to its API.
    pub fn cut(&self, i: usize) {
        let port = API_PORT.to_string();
        for rule in [
            [
                "-A", "INPUT", "-i", "eth0", "-p", "tcp", "--dport", &port, "-j", "ACCEPT",
            ],
            [
                "-A", "OUTPUT", "-o", "eth0", "-p", "tcp", "--sport", &port, "-j", "ACCEPT",
            ],
        ] {
            let mut args = vec!["iptables"];
            args.extend_from_slice(&rule);
            self.in_host(i, &args);
        }
        self.in_host(i, &["iptables", "-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        self.in_host(i, &["iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    }

    pub fn heal(&self, i: usize) {
        self.in_host(i, &["iptables", "-F", "INPUT"]);
        self.in_host(i, &["iptables", "-F", "OUTPUT"]);
    }

    /// The processes running in host `i`.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        run(&["ip", "netns", "pids", &self.hosts[i]])
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// App processes (`sleep 600`) on each host.
    pub fn app_processes(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .map(|i| {
                self.pids(i)
                    .into_iter()
                    .filter(|pid| super::processes::is_app_process(&pid.to_string()))
                    .count()
            })
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            for pid in self.pids(i) {
                try_run(&["kill", "-9", &pid.to_string()]);
            }
        }
        for ns in &self.hosts {
            try_run(&["ip", "netns", "del", ns]);
        }
        try_run(&["ip", "link", "del", &self.bridge]);
        if self.forward_rule {
            try_run(&[
                "iptables",
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
    }
}

/// A broker user for the test hosts (`guest` only logs in over loopback), deleted on drop.
pub struct BrokerUser {
    pub name: String,
    pub password: String,
}

impl BrokerUser {
    pub fn add() -> BrokerUser {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user = BrokerUser {
            name: format!("kraken-partition-{}", &id[..8]),
            password: id,
        };
        run(&["rabbitmqctl", "-q", "add_user", &user.name, &user.password]);
        run(&[
            "rabbitmqctl",
            "-q",
            "set_permissions",
            "-p",
            "/",
            &user.name,
            ".*",
            ".*",
            ".*",
        ]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        try_run(&["rabbitmqctl", "-q", "delete_user", &self.name]);
    }
}

/// Prints the end of every agent's log when the test fails.
pub struct LogsOnFailure(pub std::path::PathBuf, pub usize);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.1 {
            let log = std::fs::read_to_string(self.0.join(format!("node-{i}/agent.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- node-{i}/agent.log (end)\n{tail}");
        }
    }
}

/// A platform's test LAN: `n` hosts, a broker user for them, a join secret, a queue prefix
/// and a data dir per node (`<dir>/node-<i>`). Dropped in this order: logs printed on
/// failure, hosts (and what runs there) removed, broker user deleted, files removed.
pub struct Lan {
    logs: LogsOnFailure,
    pub net: Net,
    pub user: BrokerUser,
    pub secret: kraken_core::membership::JoinSecret,
    /// The API token, derived from the join secret.
    pub token: String,
    pub prefix: String,
    /// The broker as the hosts reach it, with the test user's credentials.
    pub amqp: String,
    pub dir: tempfile::TempDir,
}

impl Lan {
    pub fn new(n: usize) -> Lan {
        let dir = tempfile::tempdir().unwrap();
        let net = Net::new(n);
        let user = BrokerUser::add();
        let secret = kraken_core::membership::JoinSecret::generate().unwrap();
        let amqp = format!(
            "amqp://{}:{}@{}:5672/%2f",
            user.name,
            user.password,
            net.gateway()
        );
        Lan {
            logs: LogsOnFailure(dir.path().to_path_buf(), n),
            token: secret.derive("api-token"),
            prefix: format!("kraken-test-{}", uuid::Uuid::new_v4().simple()),
            net,
            user,
            secret,
            amqp,
            dir,
        }
    }

    /// `kraken agent` on host `i` (process runtime, its API on the host's port
    /// [`API_PORT`], the platform's prefix and join secret) with `args`.
    pub fn start(&self, i: usize, args: &[&str]) -> super::processes::Worker {
        let (api, address, secret) = (self.net.api(i), self.net.host_ip(i), self.secret.as_text());
        let mut all = vec![
            "--runtime",
            "process",
            "--amqp-prefix",
            &self.prefix,
            "--api-addr",
            &api,
            "--address",
            &address,
            "--join-secret",
            &secret,
        ];
        all.extend_from_slice(args);
        super::processes::Worker::start_via(
            &self.net.wrapper(i),
            &self.dir.path().join(format!("node-{i}")),
            &all,
        )
    }

    /// What the agent on host `i` printed and logged so far.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}/agent.log")))
            .unwrap_or_default()
    }
}
