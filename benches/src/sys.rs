//! Process figures the harness measures: signals, reaping with resource usage (`wait4`), peak RSS
//! from `/proc/PID/status`, and the harness's own CPU time (for the in-process client).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A reaped child: how it ended and what it used over its whole life.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    pub status: ExitStatus,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

/// Starts `cmd` and returns its pid; the caller reaps it with [`try_reap`] or [`reap_within`]
/// (`wait4`, which also yields its resource usage) rather than through `std::process::Child`.
#[allow(clippy::zombie_processes)]
pub fn spawn(cmd: &mut std::process::Command) -> io::Result<u32> {
    Ok(cmd.spawn()?.id())
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends SIGTERM. Only call it for a child that has not been reaped yet (its pid is still ours).
pub fn terminate(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGTERM)
}

/// Sends SIGKILL. Same rule as [`terminate`].
pub fn kill(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGKILL)
}

/// Reaps `pid` if it has exited (`wait4` with `WNOHANG`).
pub fn try_reap(pid: u32) -> io::Result<Option<Reaped>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers point to live, writable locals of the right types for this call.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(Reaped {
            status: ExitStatus::from_raw(status),
            cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
            max_rss_kib: ru.ru_maxrss.max(0) as u64,
        })),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Polls [`try_reap`] every millisecond until `timeout`; `None` if still running then.
pub fn reap_within(pid: u32, timeout: Duration) -> io::Result<Option<Reaped>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = try_reap(pid)? {
            return Ok(Some(r));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reserves `[0, len)` of `file` (fallocate mode 0), as a preallocated target for comparisons.
pub fn preallocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
    // SAFETY: fallocate only reads its integer arguments; the fd stays open for the call because
    // `file` is borrowed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes back dirty pages and drops the clean ones from the page cache, so the next read of any
/// file comes from the disk. Needs root (`PermissionDenied` otherwise).
pub fn drop_caches() -> io::Result<()> {
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

/// CPU time (user + system) used so far by this process, all threads.
pub fn self_cpu() -> Duration {
    // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer refers to a live, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// `VmHWM` of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Extracts `VmHWM:   1234 kB` from the text of `/proc/PID/status`.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let text = "Name:\tqemu-nbd\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(text), Some(51234));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn preallocates() {
        let f = tempfile::tempfile().unwrap();
        preallocate(&f, 1 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    }

    #[test]
    fn reaps_a_child_with_its_usage() {
        let pid = spawn(&mut std::process::Command::new("true")).unwrap();
        let r = reap_within(pid, Duration::from_secs(10)).unwrap().unwrap();
        assert!(r.status.success());
        assert!(r.max_rss_kib > 0);
    }
}
