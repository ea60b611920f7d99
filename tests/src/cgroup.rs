//! cgroup v1 children of our own cgroups, to run a Lambda binary under Lambda's limits: a
//! memory limit (256 MB functions) with its peak usage, and a CPU quota (a 256 MB function gets
//! 256/1769 of a vCPU: `cpu.cfs_quota_us=14500`, `cpu.cfs_period_us=100000`).
//!
//! Creation needs root and cgroup v1; when it fails the constructors return `None` after a loud
//! warning, so a test can still run (without the limit) and say so.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The directory of our own cgroup in the v1 hierarchy that has `controller`.
fn own_cgroup_dir(controller: &str) -> Result<PathBuf, String> {
    let cgroups =
        fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
        .ok_or_else(|| format!("no cgroup v1 `{controller}` controller in /proc/self/cgroup"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // `id parent dev root mountpoint options [optional...] - fstype source superoptions`
    let (root, mountpoint) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            if fstype != "cgroup" || !options.split(',').any(|o| o == controller) {
                return None;
            }
            let left: Vec<&str> = left.split_whitespace().collect();
            Some((left.get(3)?.to_string(), left.get(4)?.to_string()))
        })
        .ok_or_else(|| format!("the cgroup v1 `{controller}` hierarchy is not mounted"))?;
    let relative = path
        .strip_prefix(root.as_str())
        .unwrap_or(&path)
        .trim_start_matches('/');
    Ok(Path::new(&mountpoint).join(relative))
}

/// Creates `<own cgroup>/sluice-<name>-<pid>-<n>` under `controller` and writes `settings`
/// (in order) into it.
fn create_child(
    controller: &str,
    name: &str,
    settings: &[(&str, String, bool)],
) -> Result<PathBuf, String> {
    let parent = own_cgroup_dir(controller)?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let dir = parent.join(format!("sluice-{name}-{}-{n}", std::process::id()));
    if dir.exists() {
        let _ = fs::remove_dir(&dir);
    }
    fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (file, value, required) in settings {
        let path = dir.join(file);
        if let Err(e) = fs::write(&path, value) {
            if *required || path.exists() {
                let _ = fs::remove_dir(&dir);
                return Err(format!("writing {value} to {}: {e}", path.display()));
            }
        }
    }
    Ok(dir)
}

fn warn_unavailable(kind: &str, reason: &str) {
    eprintln!("WARNING: {kind} cgroup unavailable ({reason}): limit NOT enforced");
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Removes a cgroup directory, retrying while its last processes finish exiting.
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!(
        "WARNING: could not remove cgroup {} (processes still in it?)",
        dir.display()
    );
}

/// A child memory cgroup with a hard limit; removed when dropped (after its processes exit).
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Creates a child of our own memory cgroup limited to `limit_bytes` of memory, and to the
    /// same amount of memory + swap where swap accounting exists (so the limit cannot be dodged
    /// by swapping). Returns `None` after printing a warning to stderr when that is impossible
    /// (no cgroup v1 memory controller, not root, ...).
    pub fn create(name: &str, limit_bytes: u64) -> Option<MemoryCgroup> {
        let settings = [
            ("memory.limit_in_bytes", limit_bytes.to_string(), true),
            // Absent without swap accounting: tolerated.
            (
                "memory.memsw.limit_in_bytes",
                limit_bytes.to_string(),
                false,
            ),
        ];
        match create_child("memory", name, &settings) {
            Ok(dir) => Some(MemoryCgroup { dir }),
            Err(reason) => {
                warn_unavailable("memory", &reason);
                None
            }
        }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`: write a pid here to move that process (and its future children) in.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Peak memory charged to the cgroup since creation or [`MemoryCgroup::reset_peak`]
    /// (`memory.max_usage_in_bytes`: RSS plus page cache, like Lambda's "Max Memory Used").
    pub fn peak_bytes(&self) -> u64 {
        read_u64(&self.dir.join("memory.max_usage_in_bytes"))
    }

    /// Memory charged right now (`memory.usage_in_bytes`).
    pub fn usage_bytes(&self) -> u64 {
        read_u64(&self.dir.join("memory.usage_in_bytes"))
    }

    /// Restarts peak tracking from the current usage.
    pub fn reset_peak(&self) {
        let _ = fs::write(self.dir.join("memory.max_usage_in_bytes"), "0");
    }

    /// Whether the kernel OOM killer killed a process of this cgroup (`oom_kill` in
    /// `memory.oom_control`; on kernels without that counter, whether the cgroup is under OOM).
    pub fn oom_killed(&self) -> bool {
        let control = fs::read_to_string(self.dir.join("memory.oom_control")).unwrap_or_default();
        let field = |name: &str| {
            control.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name)
                    .then(|| value.trim().parse::<u64>().ok())
                    .flatten()
            })
        };
        match field("oom_kill") {
            Some(kills) => kills > 0,
            None => field("under_oom").unwrap_or(0) > 0,
        }
    }

    /// How many times usage hit the limit (`memory.failcnt`); reclaim usually follows, so a
    /// non-zero count does not mean a process died.
    pub fn limit_hits(&self) -> u64 {
        read_u64(&self.dir.join("memory.failcnt"))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

/// A child cpu cgroup with a CFS quota; removed when dropped.
#[derive(Debug)]
pub struct CpuCgroup {
    dir: PathBuf,
}

impl CpuCgroup {
    /// Creates a child of our own cpu cgroup allowed `quota_us` of CPU time per `period_us`
    /// (14_500 / 100_000 is a 256 MB Lambda's share). Returns `None` after printing a warning
    /// when that is impossible.
    pub fn create(name: &str, quota_us: u64, period_us: u64) -> Option<CpuCgroup> {
        let settings = [
            ("cpu.cfs_period_us", period_us.to_string(), true),
            ("cpu.cfs_quota_us", quota_us.to_string(), true),
        ];
        match create_child("cpu", name, &settings) {
            Ok(dir) => Some(CpuCgroup { dir }),
            Err(reason) => {
                warn_unavailable("cpu", &reason);
                None
            }
        }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`: write a pid here to move that process in.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How many periods the cgroup was throttled in (`nr_throttled` of `cpu.stat`).
    pub fn throttled_periods(&self) -> u64 {
        fs::read_to_string(self.dir.join("cpu.stat"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("nr_throttled ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

/// A child cpuacct cgroup, to measure the CPU time of every process put in it (where the v1
/// `cpuacct` controller is mounted apart from `cpu`, as on this machine; where the two share a
/// hierarchy it is simply another child there). Removed when dropped.
#[derive(Debug)]
pub struct CpuacctCgroup {
    dir: PathBuf,
}

impl CpuacctCgroup {
    /// Creates a child of our own cpuacct cgroup. Returns `None` after printing a warning when
    /// that is impossible.
    pub fn create(name: &str) -> Option<CpuacctCgroup> {
        match create_child("cpuacct", name, &[]) {
            Ok(dir) => Some(CpuacctCgroup { dir }),
            Err(reason) => {
                eprintln!("WARNING: cpuacct cgroup unavailable ({reason}): CPU time NOT measured");
                None
            }
        }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`: write a pid here to move that process (and its future children) in.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// CPU time (user + system) consumed by the cgroup's processes since creation, in
    /// nanoseconds (`cpuacct.usage`; exited processes stay counted).
    pub fn usage_ns(&self) -> u64 {
        read_u64(&self.dir.join("cpuacct.usage"))
    }
}

impl Drop for CpuacctCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}
