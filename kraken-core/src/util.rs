//! Small helpers every part of the crate shares: one of each, so their behaviour cannot
//! drift apart between copies.
//!
//! - [`lock`]: a mutex guard that survives poisoning.
//! - [`Backoff`]: exponential backoff with jitter, for every retry loop.
//! - [`redact`] / [`without_password`]: credentials kept out of logs, errors and answers.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks `mutex`, taking the data back from a poisoned lock.
///
/// Kraken's critical sections are short updates that leave the data consistent at every
/// step, so a panic in another thread holding the lock does not make the data unusable;
/// refusing it would turn one failed task into a failed node.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of
/// `min * 2^attempt`, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`; never waits longer than `max` (at least `min`).
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let full = self.min.saturating_mul(factor).min(self.max);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 {
            0
        } else {
            random() % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Sleeps for the next delay (on tokio's clock, so paused tests advance it).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random number, good enough for jitter: `RandomState` seeds every instance afresh.
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Masks credentials in every `scheme://user:password@host` found in `text`.
///
/// Errors end up in logs and in the UI, where a token pasted into a URL must not appear. For
/// `http` and `https` the whole user part is masked, since hosting services accept a token as
/// the user name; for other schemes only the password is.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let scheme_start = head[..i]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let scheme = &head[scheme_start..i];
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at)
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
            {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            Some(at) => match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `url` with the password of its user info removed (`:` included); everything else is
/// kept verbatim. For a URL handed to others that they complete with their own credentials.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return url.to_owned();
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let second = backoff.next_delay();
        assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
        let mut previous_cap = Duration::from_millis(200);
        for _ in 0..3 {
            let delay = backoff.next_delay();
            assert!(delay >= previous_cap && delay <= previous_cap * 2);
            previous_cap *= 2;
        }
        // 100 ms * 2^5 = 3.2 s is past the cap: from now on the cap rules.
        for _ in 0..30 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_varies() {
        let draws: HashSet<u64> = (0..20).map(|_| random()).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn only_the_password_of_a_broker_url_is_masked() {
        // The git cases are in `source`'s tests, which mask what git prints.
        assert_eq!(
            redact("cannot connect to amqp://kraken:secret@10.0.0.2:5672/%2f"),
            "cannot connect to amqp://kraken:***@10.0.0.2:5672/%2f"
        );
    }

    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            without_password("amqp://kraken:pw@h:5672/%2f?x=1"),
            "amqp://kraken@h:5672/%2f?x=1"
        );
        assert_eq!(without_password("amqp://h:5672/"), "amqp://h:5672/");
        assert_eq!(without_password("amqp://u@h/"), "amqp://u@h/");
        assert_eq!(without_password("not a url"), "not a url");
    }
}
