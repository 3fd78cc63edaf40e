//! Pure conversions between Kraken's model and Docker's: names, labels, stats arithmetic
//! and log line parsing. No I/O here, so all of it is unit-tested.

use crate::model::{DeploymentId, LogLine, LogStream, Timestamp};
use bollard::models::{ContainerCpuStats, ContainerMemoryStats};

/// Every object Kraken creates carries this label set to `true`.
pub const LABEL_MANAGED: &str = "io.kraken.managed";
/// The runtime's node label ([`DockerConfig::node_label`](super::DockerConfig::node_label)):
/// which runtime owns the object.
pub const LABEL_OWNER: &str = "io.kraken.owner";
/// The node id the instance was started for.
pub const LABEL_NODE: &str = "io.kraken.node";
/// The deployment id.
pub const LABEL_DEPLOYMENT: &str = "io.kraken.deployment";
/// The generation.
pub const LABEL_GENERATION: &str = "io.kraken.generation";
/// The app's name (from the manifest), for people reading `docker ps`.
pub const LABEL_APP: &str = "io.kraken.app";
/// The host port the app's port is published on.
pub const LABEL_HOST_PORT: &str = "io.kraken.host-port";
/// The port the app listens on inside the container.
pub const LABEL_CONTAINER_PORT: &str = "io.kraken.container-port";
/// When the instance was started, in milliseconds since the Unix epoch.
pub const LABEL_STARTED_AT: &str = "io.kraken.started-at";

/// Docker's limit on the length of a tag.
const MAX_TAG: usize = 128;

/// The repository part of an image name for an app: `kraken/<app>`, the app name reduced to
/// what Docker accepts in a repository component (lower case `[a-z0-9._-]`, starting and
/// ending with an alphanumeric character).
pub fn image_repository(app: &str) -> String {
    let mut name: String = app
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Separators may not repeat or sit at either end.
    while name.contains("--") || name.contains("..") || name.contains("__") {
        name = name
            .replace("--", "-")
            .replace("..", ".")
            .replace("__", "_");
    }
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let name: String = name.chars().take(64).collect();
    let name = name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        "kraken/app".to_owned()
    } else {
        format!("kraken/{name}")
    }
}

/// The tag of the image built for a deployment's generation: `<deployment>-<generation>`.
/// Deployment ids are already safe tag characters; an id too long for a tag is cut (the
/// image's labels, not its tag, identify it).
pub fn image_tag(deployment: &DeploymentId, generation: u64) -> String {
    let suffix = format!("-{generation}");
    let keep = MAX_TAG.saturating_sub(suffix.len());
    let head: String = deployment.as_str().chars().take(keep).collect();
    format!("{head}{suffix}")
}

/// The container name of a deployment's generation: `kraken-<deployment>-<generation>`.
pub fn container_name(deployment: &DeploymentId, generation: u64) -> String {
    format!("kraken-{deployment}-{generation}")
}

/// CPU use in percent of one core between two samples, as `docker stats` computes it: the
/// container's CPU time delta over the host's, times the number of CPUs. Zero when either
/// delta is missing (a first sample, a stopped container).
pub fn cpu_percent(current: &ContainerCpuStats, previous: &ContainerCpuStats) -> f64 {
    let total = |s: &ContainerCpuStats| {
        s.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = total(current).saturating_sub(total(previous));
    let system_delta = current
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(previous.system_cpu_usage.unwrap_or(0));
    let cpus = current
        .online_cpus
        .filter(|n| *n > 0)
        .map(u64::from)
        .or_else(|| {
            current
                .cpu_usage
                .as_ref()
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as u64)
        });
    match cpus {
        Some(cpus) if cpu_delta > 0 && system_delta > 0 => {
            cpu_delta as f64 / system_delta as f64 * cpus as f64 * 100.0
        }
        _ => 0.0,
    }
}

/// Memory in use, as `docker stats` shows it: usage less the inactive file cache, which the
/// kernel reclaims before it would kill anything (`total_inactive_file` on cgroup v1,
/// `inactive_file` on v2).
pub fn memory_used(mem: &ContainerMemoryStats) -> u64 {
    let usage = mem.usage.unwrap_or(0);
    let inactive = mem.stats.as_ref().and_then(|s| {
        s.get("total_inactive_file")
            .or_else(|| s.get("inactive_file"))
            .copied()
    });
    match inactive {
        Some(cache) if cache < usage => usage - cache,
        _ => usage,
    }
}

/// Splits streamed build output into lines, keeping a partial last line until its end comes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: String,
}

impl LineSplitter {
    /// Feeds a chunk, returning the lines it completes (without their line breaks; empty
    /// lines and carriage-return-only progress noise are dropped).
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.pending.push_str(chunk);
        let mut lines = Vec::new();
        while let Some(at) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=at).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.trim().is_empty() {
                lines.push(line.to_owned());
            }
        }
        lines
    }

    /// The partial line left at the end, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim_end_matches(['\n', '\r']);
        (!rest.trim().is_empty()).then(|| rest.to_owned())
    }
}

/// Turns one frame of `docker logs --timestamps` output into log lines: each line starts with
/// an RFC 3339 timestamp and a space, which becomes the line's time. A line without a
/// readable timestamp keeps its text whole and is stamped now.
pub fn log_lines(stream: LogStream, frame: &[u8]) -> Vec<LogLine> {
    let text = String::from_utf8_lossy(frame);
    text.split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            let parsed = line
                .split_once(' ')
                .and_then(|(ts, rest)| parse_rfc3339_millis(ts).map(|ms| (ms, rest)));
            match parsed {
                Some((ms, rest)) => {
                    let mut out = LogLine::new(stream, rest);
                    out.at = Timestamp(ms);
                    out
                }
                None => LogLine::new(stream, line),
            }
        })
        .collect()
}

/// Parses an RFC 3339 UTC timestamp as Docker writes them (`2026-11-22T02:18:34.123456789Z`)
/// into milliseconds since the Unix epoch. Offsets other than `Z` are honoured too.
pub fn parse_rfc3339_millis(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bollard::models::ContainerCpuUsage;
    use std::collections::HashMap;

    #[test]
    fn image_names_are_what_docker_accepts() {
        assert_eq!(image_repository("My App!"), "kraken/my-app");
        assert_eq!(image_repository("--x__y..z--"), "kraken/x_y.z");
        assert_eq!(image_repository("日本"), "kraken/app");
        assert_eq!(image_repository(""), "kraken/app");
        assert!(image_repository(&"a".repeat(300)).len() <= 7 + 64);
        let dep = DeploymentId::parse("dep-abc").unwrap();
        assert_eq!(image_tag(&dep, 3), "dep-abc-3");
        let long = DeploymentId::parse(&"d".repeat(128)).unwrap();
        let tag = image_tag(&long, 12);
        assert_eq!(tag.len(), 128);
        assert!(tag.ends_with("-12"));
        assert_eq!(container_name(&dep, 2), "kraken-dep-abc-2");
    }

    fn cpu(total: u64, system: u64, online: Option<u32>, percpu: usize) -> ContainerCpuStats {
        ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                percpu_usage: Some(vec![0; percpu]),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: online,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_matches_docker_stats() {
        // 1000 of 10000 host ticks on 2 CPUs: 20 % of one core.
        let now = cpu(1_500, 20_000, Some(2), 0);
        assert!((cpu_percent(&now, &cpu(500, 10_000, Some(2), 0)) - 20.0).abs() < 1e-9);
        let percpu = cpu_percent(&cpu(1_500, 20_000, None, 4), &cpu(500, 10_000, None, 4));
        assert!((percpu - 40.0).abs() < 1e-9);
        assert_eq!(cpu_percent(&now, &now), 0.0);
    }

    #[test]
    fn memory_excludes_inactive_cache() {
        let mut stats = HashMap::new();
        stats.insert("total_inactive_file".to_owned(), 300);
        let v1 = ContainerMemoryStats {
            usage: Some(1000),
            stats: Some(stats),
            ..Default::default()
        };
        assert_eq!(memory_used(&v1), 700);
        let mut stats = HashMap::new();
        stats.insert("inactive_file".to_owned(), 5000);
        let odd = ContainerMemoryStats {
            usage: Some(1000),
            stats: Some(stats),
            ..Default::default()
        };
        assert_eq!(memory_used(&odd), 1000);
    }

    #[test]
    fn build_output_is_split_into_whole_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(
            s.push("Step 1/3 : FROM x\n ---> abc"),
            vec!["Step 1/3 : FROM x"]
        );
        assert_eq!(s.push("\n\n"), vec![" ---> abc"]);
        assert_eq!(s.push("tail"), Vec::<String>::new());
        assert_eq!(s.finish(), Some("tail".to_owned()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn timestamps_are_parsed() {
        assert_eq!(parse_rfc3339_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_millis("2026-11-22T02:18:34.123456789Z"),
            Some(1_795_313_914_123)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-22T03:18:34.5+01:00"),
            Some(1_795_313_914_500)
        );
        assert_eq!(
            parse_rfc3339_millis("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for bad in [
            "",
            "hello world",
            "2026-13-01T00:00:00Z",
            "2026-11-22T02:18:34",
        ] {
            assert_eq!(parse_rfc3339_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn log_frames_become_lines_with_their_time() {
        let lines = log_lines(
            LogStream::Stderr,
            b"2026-11-22T02:18:34.123Z hello world\n2026-11-22T02:18:35Z second\n",
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "hello world");
        assert_eq!(lines[0].at, Timestamp(1_795_313_914_123));
        assert_eq!(lines[0].stream, LogStream::Stderr);
        assert_eq!(lines[1].text, "second");
        let raw = log_lines(LogStream::Stdout, b"no stamp here");
        assert_eq!(raw[0].text, "no stamp here");
    }
}
