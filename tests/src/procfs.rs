//! What a benchmark reads about a process it started (resident memory and CPU time) and
//! about the whole machine (time spent in the kernel).

use std::time::Duration;

/// Resident memory of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of `pid` in KiB since it started, its high-water mark (0 once it
/// is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// One `NAME:   123 kB` line of `/proc/PID/status`, in KiB (0 when absent).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time `pid` has used so far, user and system, all its threads together (zero once
/// it is gone).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    from_ticks(sum_fields(&fields, &[11, 12]))
}

/// Time every CPU of the machine has spent since boot in the kernel: system calls and
/// other work on behalf of processes (`system`) and serving interrupts (`irq`,
/// `softirq`, where received packets are handled), from the `cpu` line of `/proc/stat`.
/// Whatever ran, not only one process. Zero if it cannot be read.
pub fn machine_kernel_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    from_ticks(sum_fields(&fields, &[2, 5, 6]))
}

/// The sum of the fields at `at` that parse as numbers.
fn sum_fields(fields: &[&str], at: &[usize]) -> u64 {
    at.iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum()
}

/// Clock ticks (`USER_HZ`, the unit of `/proc` CPU times) as a duration.
#[allow(unsafe_code)]
fn from_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Duration::from_micros(ticks.saturating_mul(1_000_000) / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_burns_cpu() {
        let me = std::process::id();
        // The peak is read after the resident size: other tests' threads may grow it.
        let rss = rss_kib(me);
        assert!(rss > 0);
        assert!(peak_rss_kib(me) >= rss);
        // Spin until 100 ms of CPU time are counted, or give up after 10 s of wall time
        // (a loaded machine may give this thread little of each second).
        let before = cpu_time(me);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time(me) - before < Duration::from_millis(100)
            && t.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let used = cpu_time(me) - before;
        assert!(
            used >= Duration::from_millis(100),
            "spun {:?}, counted {used:?}",
            t.elapsed()
        );
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
        assert_eq!(peak_rss_kib(u32::MAX), 0);
    }

    #[test]
    fn the_machine_has_spent_time_in_the_kernel() {
        let before = machine_kernel_time();
        assert!(before > Duration::ZERO);
        for _ in 0..1000 {
            let _ = std::fs::metadata("/proc/self");
        }
        assert!(machine_kernel_time() >= before);
    }
}
