//! What the process runtime asks of the operating system: signals to process groups and
//! `/proc/<pid>/stat` (process state, group and start time).

use std::io;
use std::path::Path;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// Field 5: the process group.
    pub pgrp: u32,
    /// Field 22: start time in clock ticks since boot. With the pid it identifies a process
    /// across pid reuse.
    pub start_ticks: u64,
}

impl ProcStat {
    /// A zombie (or dead) process holds its pid but runs nothing.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // `rest[0]` is field 3; field n is `rest[n - 3]`.
    let state = rest.first()?.chars().next()?;
    let pgrp = rest.get(2)?.parse().ok()?;
    let start_ticks = rest.get(19)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_ticks,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(super) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// [`read_stat`] off the async threads.
pub(super) async fn read_stat_async(pid: u32) -> Option<ProcStat> {
    let text = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    parse_stat(&text)
}

/// What is known about the process with a recorded pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity {
    /// The very process that was started, still running.
    Alive,
    /// No process holds the pid (or only a zombie does).
    Gone,
    /// Another process holds the pid now, or the start time is unknown: not ours to touch.
    Foreign,
}

/// Compares what `/proc` says about a pid with the start time recorded when it was spawned.
pub(super) fn identify(stat: Option<ProcStat>, start_ticks: Option<u64>) -> Identity {
    match stat {
        None => Identity::Gone,
        Some(stat) if Some(stat.start_ticks) != start_ticks => Identity::Foreign,
        Some(stat) if stat.is_dead() => Identity::Gone,
        Some(_) => Identity::Alive,
    }
}

/// `kill(2)`, the one libc call of the process runtime.
#[allow(unsafe_code)]
fn raw_kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers, reads and writes no memory of this process and has
    // no preconditions; its failure is reported through the return value and errno.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` (0 only probes) to every process of group `pgid`. `Ok(false)` when the
/// group has no process left.
///
/// Groups 0 and 1 are refused: `kill(0, ..)` would signal the worker's own group and
/// `kill(-1, ..)` every process it may signal.
pub(super) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<bool> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal process group {pgid}"),
            )
        })?;
    match raw_kill(-pgid, signal) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The pids of the running (not zombie) processes of group `pgid`, by a scan of `/proc`.
pub(super) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(Path::new("/proc")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| read_stat(*pid).is_some_and(|s| s.pgrp == pgid && !s.is_dead()))
        .collect()
}

/// Whether group `pgid` still has a running process. Zombies do not count: an orphan's
/// zombie lingers until init reaps it, and it runs nothing.
pub(super) fn group_alive(pgid: u32) -> bool {
    match signal_group(pgid, 0) {
        // Cheap answer first; the scan only when something answers.
        Ok(true) => !group_members(pgid).is_empty(),
        Ok(false) | Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (we (ird) name) S 1 4240 4240 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                pgrp: 4240,
                start_ticks: 987654
            }
        );
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_identified() {
        let me = std::process::id();
        let stat = read_stat(me).unwrap();
        assert_eq!(
            identify(Some(stat), Some(stat.start_ticks)),
            Identity::Alive
        );
        assert_eq!(
            identify(Some(stat), Some(stat.start_ticks + 1)),
            Identity::Foreign
        );
        assert_eq!(identify(None, Some(1)), Identity::Gone);
    }

    #[test]
    fn special_groups_are_refused() {
        for pgid in [0, 1, u32::MAX] {
            assert!(signal_group(pgid, 0).is_err(), "{pgid} must be refused");
        }
    }
}
