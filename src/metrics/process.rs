//! The process's own figures as Prometheus's client libraries name them (`process_*`), read
//! from `/proc` at each scrape. Blocking: callers run it off the shard's thread.

use std::io;

/// What `/proc` says of this process.
#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> io::Result<Self> {
        let mut stats = ProcessStats::default();
        let status = std::fs::read_to_string("/proc/self/status")?;
        for line in status.lines() {
            let mut words = line.split_whitespace();
            let (Some(field), Some(value)) = (words.next(), words.next()) else { continue };
            let value: u64 = value.parse().unwrap_or(0);
            match field {
                "VmRSS:" => stats.resident_bytes = value * 1024,
                "VmSize:" => stats.virtual_bytes = value * 1024,
                "Threads:" => stats.threads = value,
                _ => {}
            }
        }
        stats.open_fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            stats.max_fds = limit.rlim_cur;
        }
        // SAFETY: sysconf reads a configuration value and touches no memory of ours.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // The command name, field 2, is in parentheses and may hold spaces: count from after it.
        let after_name = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // proc(5): utime is field 14, stime 15, starttime 22 (ticks after boot).
        stats.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
        let boot_time = std::fs::read_to_string("/proc/stat")?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|t| t.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        stats.start_time_seconds = boot_time as f64 + field(22) as f64 / ticks;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_files_and_a_start() {
        let stats = ProcessStats::read().expect("/proc is readable");
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes);
        assert!(stats.open_fds >= 3 && stats.max_fds >= stats.open_fds, "{stats:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert!(stats.start_time_seconds > 1.6e9 && stats.start_time_seconds <= now.as_secs_f64());
        assert!(stats.threads >= 1);
    }
}
