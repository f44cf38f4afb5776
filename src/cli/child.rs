//! Child processes for the benches that measure waas from outside: a process killed
//! when dropped, a scratch folder removed when dropped, free loopback ports, and the
//! CPU time a process has used.

use std::process::Child;
use std::time::Duration;

/// One child process, killed when dropped.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) base: String,
    pub(super) name: String,
}

impl Proc {
    /// User + system CPU time the process has used so far.
    pub(super) fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder for the children's files, removed when dropped.
pub(super) struct Scratch(std::path::PathBuf);

impl Scratch {
    pub(super) fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("waas-bench-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub(super) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound and released).
pub(super) fn port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// User + system CPU time of process `pid` (all its threads), from `/proc/PID/stat`
/// (fields 14 and 15, in clock ticks of 1/100 s: `USER_HZ` on Linux).
pub(super) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat (Linux only): {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))
    };
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime 12.
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

/// Peak resident memory of process `pid` (`VmHWM` in `/proc/PID/status`), in MiB.
pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
