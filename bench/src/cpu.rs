//! CPU time from `/proc`: the service's, and PostgreSQL's (all its processes), so that
//! the work a step costs can be compared across runs on a shared machine, where wall time
//! also measures the neighbours.

use std::time::Duration;

use anyhow::Context;

use crate::service::Service;

/// CPU time (user + system) process `pid` has used so far.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("cannot read /proc/<pid>/stat")?;
    stat_cpu(&stat).context("malformed /proc/<pid>/stat")
}

/// CPU time used so far by every process named `postgres` on this machine (the server's
/// backends, writers and autovacuum workers). A process that exits between two readings
/// takes its time with it; the pooled connections that do the work stay.
fn postgres_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| stat_cpu(&stat))
        .sum()
}

/// The service's and PostgreSQL's CPU time at one moment; two readings around a step
/// tell what the step cost each.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub service: Duration,
    pub postgres: Duration,
}

impl CpuReading {
    /// Reads both now.
    pub fn take(service: &Service) -> anyhow::Result<Self> {
        Ok(CpuReading { service: service.cpu_time()?, postgres: postgres_cpu() })
    }

    /// What each has used since this reading.
    pub fn spent_since(self, service: &Service) -> anyhow::Result<Self> {
        let now = CpuReading::take(service)?;
        Ok(CpuReading {
            service: now.service.saturating_sub(self.service),
            postgres: now.postgres.saturating_sub(self.postgres),
        })
    }
}

/// utime + stime of a `/proc/<pid>/stat` line: the 12th and 13th fields after the
/// parenthesised command name, in clock ticks (100 a second on Linux).
fn stat_cpu(stat: &str) -> Option<Duration> {
    let after_name = stat.rsplit_once(')')?.1;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks() {
        let stat = "4242 (postgres: x (y)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0";
        assert_eq!(stat_cpu(stat), Some(Duration::from_millis(1_750)));
        assert_eq!(stat_cpu("4242 (cut"), None);
    }

    #[test]
    fn counts_the_cpu_a_process_spends() {
        let before = process_cpu(std::process::id()).unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        // Busy until the reading has moved by 50 ms (5 ticks); a reading that never moves
        // fails after 5 s, however loaded the machine is.
        loop {
            for _ in 0..1_000_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            let spent = process_cpu(std::process::id()).unwrap().saturating_sub(before);
            if spent >= Duration::from_millis(50) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "5 s of busy work read as {spent:?} of CPU");
        }
    }
}
