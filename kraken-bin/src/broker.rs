//! A RabbitMQ broker for an orchestrator that was not given one: the broker already
//! running on this machine, or one started here, with a `kraken` user whose password is
//! derived from the join secret (so every node that has the secret can compute it).

use anyhow::{Context, Result, bail};
use kraken_core::membership::JoinSecret;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// RabbitMQ's AMQP port.
const AMQP_PORT: u16 = 5672;

/// The broker user Kraken's nodes connect as.
const USER: &str = "kraken";

/// What the broker password is derived for (see [`JoinSecret::derive`]).
const PASSWORD_PURPOSE: &str = "broker-password";

/// How long a broker started here may take to come up.
const START_WAIT: Duration = Duration::from_secs(90);

/// The most one `rabbitmqctl` or `rabbitmq-diagnostics` call may take: each starts an
/// Erlang VM, which takes a second or two.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for a TCP connection to the broker's port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two checks of a starting broker.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How to get a broker when there is none.
const INSTALL_HINT: &str = "install and start RabbitMQ (Debian/Ubuntu: `sudo apt-get install rabbitmq-server`; \
     or `docker run -d -p 5672:5672 rabbitmq:4`), or pass --amqp <url> with the URL of a broker";

/// The broker of this node.
#[derive(Clone, PartialEq, Eq)]
pub struct LocalBroker {
    /// URL for this node: on loopback.
    pub url: String,
    /// URL for the other nodes: this node's LAN address as host.
    pub announced_url: String,
    /// Whether the broker was started here (rather than found running).
    pub started: bool,
}

/// Passwords are not shown.
impl fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBroker")
            .field("url", &crate::node::redact(&self.url))
            .field("announced_url", &crate::node::redact(&self.announced_url))
            .field("started", &self.started)
            .finish()
    }
}

/// Makes sure a RabbitMQ broker runs on this machine and that the `kraken` user exists
/// with the password derived from `secret`. `address` is this machine's address on the
/// LAN, the host in [`LocalBroker::announced_url`].
///
/// A broker that already accepts connections on 127.0.0.1:5672 is used as it is;
/// otherwise `rabbitmq-server -detached` starts one. When the user cannot be set up
/// (`rabbitmqctl` missing or not allowed, e.g. a broker in a container), the `guest` user is
/// used instead, with a warning: RabbitMQ lets it in from loopback only, unless the broker
/// is configured otherwise (the official Docker image is).
pub async fn ensure_local(address: &str, secret: &JoinSecret) -> Result<LocalBroker> {
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, AMQP_PORT));
    let started = if accepts(local).await {
        tracing::info!(addr = %local, "using the RabbitMQ broker running on this machine");
        false
    } else {
        start_broker(local).await?;
        true
    };
    let password = secret.derive(PASSWORD_PURPOSE);
    match set_up_user(&password).await {
        Ok(()) => Ok(LocalBroker {
            url: amqp_url(USER, &password, "127.0.0.1"),
            announced_url: amqp_url(USER, &password, address),
            started,
        }),
        Err(err) => {
            tracing::warn!(
                cause = %format!("{err:#}"),
                "cannot set up the broker user {USER}; using the guest user, which RabbitMQ \
                 accepts from loopback only unless configured otherwise: other nodes may not \
                 be able to connect"
            );
            Ok(LocalBroker {
                url: amqp_url("guest", "guest", "127.0.0.1"),
                announced_url: amqp_url("guest", "guest", address),
                started,
            })
        }
    }
}

/// `amqp://user:password@host:5672/%2f` (the default vhost `/`); IPv6 hosts in brackets.
/// The user and password are Kraken's own (a name and hex digits): nothing to escape.
fn amqp_url(user: &str, password: &str, host: &str) -> String {
    let host = match host.parse::<Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_owned(),
    };
    format!("amqp://{user}:{password}@{host}:{AMQP_PORT}/%2f")
}

/// Whether something accepts TCP connections at `addr`.
async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Starts `rabbitmq-server` detached and waits until it answers and accepts connections.
async fn start_broker(local: SocketAddr) -> Result<()> {
    let Some(server) = find_program("rabbitmq-server") else {
        bail!(
            "no RabbitMQ broker accepts connections on {local} and `rabbitmq-server` is not installed: {INSTALL_HINT}"
        );
    };
    tracing::info!(program = %server.display(), "no broker on {local}: starting RabbitMQ");
    let mut command = Command::new(&server);
    command
        .arg("-detached")
        .stdin(Stdio::null())
        // The daemon it leaves behind would hold captured pipes open.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(COMMAND_TIMEOUT, command.status())
        .await
        .with_context(|| {
            format!("`rabbitmq-server -detached` did not return within {COMMAND_TIMEOUT:?}")
        })?
        .with_context(|| format!("cannot run {}", server.display()))?;
    if !status.success() {
        bail!(
            "`rabbitmq-server -detached` failed ({status}); it usually needs root or the rabbitmq user (see /var/log/rabbitmq/): {INSTALL_HINT}"
        );
    }
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let pinged = rabbitmq("rabbitmq-diagnostics", &["-q", "ping"], "")
            .await
            .is_ok();
        if pinged && accepts(local).await {
            tracing::info!(addr = %local, "RabbitMQ is up");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "RabbitMQ was started but does not accept connections on {local} after {START_WAIT:?} (see /var/log/rabbitmq/): {INSTALL_HINT}"
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Creates the `kraken` user with `password`, or sets its password when it exists, and
/// gives it every permission on the vhost `/`.
async fn set_up_user(password: &str) -> Result<()> {
    // rabbitmqctl takes the password as an argument (3.x cannot read it from stdin): it is
    // visible in the process list for the second the command runs. It is kept out of every
    // log line and error message here.
    let users = rabbitmq("rabbitmqctl", &["-q", "list_users"], password).await?;
    let exists = has_user(&users, USER);
    let action = if exists {
        "change_password"
    } else {
        "add_user"
    };
    let set = rabbitmq("rabbitmqctl", &["-q", action, USER, password], password).await;
    if let Err(err) = set {
        if exists {
            return Err(err);
        }
        // Created meanwhile by someone else: set its password instead.
        rabbitmq(
            "rabbitmqctl",
            &["-q", "change_password", USER, password],
            password,
        )
        .await
        .context(err)?;
    }
    rabbitmq(
        "rabbitmqctl",
        &["-q", "set_permissions", "-p", "/", USER, ".*", ".*", ".*"],
        password,
    )
    .await?;
    tracing::info!(
        user = USER,
        created = !exists,
        "broker user ready (password derived from the join secret)"
    );
    Ok(())
}

/// Whether the output of `rabbitmqctl list_users` (a header, then `name<TAB>tags` lines)
/// names `user`.
fn has_user(list_users: &str, user: &str) -> bool {
    list_users
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == user)
}

/// Runs a RabbitMQ command line tool found on the PATH, bounded by [`COMMAND_TIMEOUT`];
/// returns its standard output. `secret` is replaced by `***` wherever the command or its
/// output is shown.
async fn rabbitmq(program: &str, args: &[&str], secret: &str) -> Result<String> {
    let shown = scrub(&format!("{program} {}", args.join(" ")), secret);
    let path = find_program(program)
        .with_context(|| format!("`{program}` is not installed (not found on the PATH)"))?;
    let mut command = Command::new(path);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("`{shown}` did not finish within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("cannot run `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            scrub(said, secret)
        );
    }
    Ok(stdout)
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

/// The executable file `name` in a directory of the PATH, as a shell would find it. The
/// sbin directories are searched too: RabbitMQ's tools live there and are not always on a
/// non-root user's PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_use_loopback_here_and_the_lan_address_elsewhere() {
        assert_eq!(
            amqp_url("kraken", "0a1b", "127.0.0.1"),
            "amqp://kraken:0a1b@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            amqp_url("kraken", "0a1b", "192.168.1.10"),
            "amqp://kraken:0a1b@192.168.1.10:5672/%2f"
        );
        assert_eq!(
            amqp_url("kraken", "0a1b", "fd00::2"),
            "amqp://kraken:0a1b@[fd00::2]:5672/%2f"
        );
        assert_eq!(
            amqp_url("guest", "guest", "pi.local"),
            "amqp://guest:guest@pi.local:5672/%2f"
        );
    }

    #[test]
    fn the_password_is_derived_from_the_secret() {
        let secret = JoinSecret::generate().unwrap();
        let password = secret.derive(PASSWORD_PURPOSE);
        assert_eq!(password.len(), 64);
        assert_eq!(password, secret.derive("broker-password"));
        assert!(!password.contains(&secret.as_text()[4..]));
    }

    #[test]
    fn debug_hides_the_password() {
        let broker = LocalBroker {
            url: amqp_url(USER, "s3cr3tpassword", "127.0.0.1"),
            announced_url: amqp_url(USER, "s3cr3tpassword", "10.0.0.2"),
            started: false,
        };
        let shown = format!("{broker:?}");
        assert!(!shown.contains("s3cr3tpassword"), "{shown}");
        assert!(
            shown.contains("amqp://kraken:***@10.0.0.2:5672/%2f"),
            "{shown}"
        );
    }

    #[test]
    fn the_password_is_scrubbed_from_messages() {
        assert_eq!(
            scrub("rabbitmqctl add_user kraken pw123 failed: pw123", "pw123"),
            "rabbitmqctl add_user kraken *** failed: ***"
        );
        assert_eq!(scrub("nothing to hide", ""), "nothing to hide");
    }

    #[tokio::test]
    async fn failing_commands_do_not_show_the_password() {
        // `false` exits with 1 whatever its arguments.
        let err = rabbitmq("false", &["add_user", "kraken", "pw123"], "pw123")
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(!message.contains("pw123"), "{message}");
        assert!(message.contains("false add_user kraken ***"), "{message}");
        let err = rabbitmq("kraken-no-such-program", &["pw123"], "pw123")
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("not installed"), "{message}");
        assert!(!message.contains("pw123"), "{message}");
    }

    #[test]
    fn users_are_found_in_list_users_output() {
        let output = "user\ttags\nguest\t[administrator]\nkraken\t[]\n";
        assert!(has_user(output, "kraken"));
        assert!(has_user(output, "guest"));
        assert!(!has_user(output, "kra"));
        assert!(!has_user("user\ttags\nguest\t[administrator]\n", "kraken"));
        assert!(!has_user("", "kraken"));
    }

    #[tokio::test]
    async fn a_listening_port_is_seen() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(accepts(listener.local_addr().unwrap()).await);
        // Bound but not listening: the port stays ours (a dropped listener's port could be
        // taken by another test meanwhile) and refuses connections.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(!accepts(socket.local_addr().unwrap()).await);
    }

    /// Against the broker `.ci/rabbitmq.sh` starts.
    #[tokio::test]
    #[ignore = "needs rabbitmq"]
    async fn the_local_broker_gets_a_kraken_user() {
        let secret = JoinSecret::generate().unwrap();
        let broker = ensure_local("192.0.2.7", &secret).await.unwrap();
        let password = secret.derive(PASSWORD_PURPOSE);
        assert_eq!(broker.url, amqp_url(USER, &password, "127.0.0.1"));
        assert_eq!(broker.announced_url, amqp_url(USER, &password, "192.0.2.7"));
        let users = rabbitmq("rabbitmqctl", &["-q", "list_users"], "")
            .await
            .unwrap();
        assert!(has_user(&users, USER), "{users}");
        rabbitmq(
            "rabbitmqctl",
            &["-q", "authenticate_user", USER, &password],
            &password,
        )
        .await
        .unwrap();
        assert!(accepts(SocketAddr::from((Ipv4Addr::LOCALHOST, AMQP_PORT))).await);

        // Again, with another secret: the password follows the secret.
        let other = JoinSecret::generate().unwrap();
        let again = ensure_local("192.0.2.7", &other).await.unwrap();
        assert!(!again.started, "the running broker is reused");
        let new_password = other.derive(PASSWORD_PURPOSE);
        rabbitmq(
            "rabbitmqctl",
            &["-q", "authenticate_user", USER, &new_password],
            &new_password,
        )
        .await
        .unwrap();
        assert!(
            rabbitmq(
                "rabbitmqctl",
                &["-q", "authenticate_user", USER, &password],
                &password
            )
            .await
            .is_err(),
            "the old password no longer works"
        );
    }
}
