//! What Linux's /proc says about a server process on this machine: resident memory, open file
//! descriptors (each accepted connection is one) and CPU time. Only the sync scenarios use it, and
//! only when they are given the server's PID.

use std::time::{Duration, Instant};

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (peak resident memory) of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} in {path}"))
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: u32) -> Result<usize, String> {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .map(|d| d.count())
        .map_err(|e| format!("listing {path}: {e}"))
}

/// User plus system CPU time of `pid` (all its threads) in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // The command name may contain spaces and parentheses; the fields start after the last `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `state` is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12 here.
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected {path}"))
    };
    Ok(field(11)? + field(12)?)
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn own_open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    // "unlimited" does not parse, and does not limit.
    Some(soft.parse().unwrap_or(u64::MAX))
}

/// Linux's `USER_HZ`, the unit of /proc's CPU times: 100 on every architecture it supports.
const TICKS_PER_SEC: f64 = 100.0;

/// Waits until `pid` has used less than `max_share` of one core over `windows` consecutive
/// one-second windows, i.e. has worked through everything it was sent. `Ok(Some(elapsed))` once
/// quiet, `Ok(None)` if it was still busy after `limit`.
pub async fn wait_quiet(
    pid: u32,
    max_share: f64,
    windows: u32,
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_ticks(pid)?;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_ticks(pid)?;
        let share = now.saturating_sub(last) as f64 / TICKS_PER_SEC;
        last = now;
        if share <= max_share {
            quiet += 1;
            if quiet >= windows {
                return Ok(Some(started.elapsed()));
            }
        } else {
            quiet = 0;
        }
    }
    Ok(None)
}

/// Waits until `pid`'s resident memory stops moving: the last `window` one-second readings lie
/// within 1% (or 1 MiB) of each other. An allocator handing memory back, or caches settling,
/// would otherwise land in whichever reading they happen to overlap. Returns the last reading
/// (KiB) and whether it was stable within `limit`.
pub async fn wait_rss_stable(
    pid: u32,
    window: usize,
    limit: Duration,
) -> Result<(u64, bool), String> {
    let started = Instant::now();
    let mut readings = vec![rss_kib(pid)?];
    loop {
        let recent = &readings[readings.len().saturating_sub(window.max(2))..];
        if recent.len() >= window.max(2) {
            let (lo, hi) = (
                recent.iter().copied().min().unwrap_or(0),
                recent.iter().copied().max().unwrap_or(0),
            );
            if hi - lo <= (hi / 100).max(1024) {
                return Ok((readings[readings.len() - 1], true));
            }
        }
        if started.elapsed() >= limit {
            return Ok((readings[readings.len() - 1], false));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        readings.push(rss_kib(pid)?);
    }
}

/// Waits until `pid` has at least `target` descriptors open; returns how many it had last, and
/// whether the target was reached within `limit`.
pub async fn wait_fds_at_least(
    pid: u32,
    target: usize,
    limit: Duration,
) -> Result<(usize, bool), String> {
    let started = Instant::now();
    loop {
        let n = open_fds(pid)?;
        if n >= target {
            return Ok((n, true));
        }
        if started.elapsed() >= limit {
            return Ok((n, false));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `pid` has at most `target` descriptors open (connections released); like
/// [`wait_fds_at_least`] the other way round.
pub async fn wait_fds_at_most(
    pid: u32,
    target: usize,
    limit: Duration,
) -> Result<(usize, bool), String> {
    let started = Instant::now();
    loop {
        let n = open_fds(pid)?;
        if n <= target {
            return Ok((n, true));
        }
        if started.elapsed() >= limit {
            return Ok((n, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(hwm_kib(pid).unwrap() >= rss_kib(pid).unwrap() / 2);
        assert!(open_fds(pid).unwrap() >= 3);
        cpu_ticks(pid).unwrap();
        assert!(own_open_file_limit().unwrap() > 0);
    }
}
