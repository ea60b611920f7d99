//! The memory a run may plan with: `--memory-mb`, else the machine's — the memory limit of the
//! process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`, the smallest of its
//! ancestors' too) when one is set, else `MemTotal` of `/proc/meminfo`.
//!
//! The result is kept within [`MIN_MIB`]–[`MAX_MIB`], the memory sizes of Lambda that the
//! budget's formula ([`sluice::budget`]) is made and tested for: past 10240 MiB it would only
//! grow parts (the parts in flight are capped at 16), so a 64 GiB machine uses 150 MiB parts
//! rather than 1 GiB ones, and the budget never claims memory other programs need.

use std::path::{Path, PathBuf};

use sluice::MemoryBudget;

/// The smallest memory a run plans with, in MiB: Lambda's smallest size.
pub const MIN_MIB: u64 = 128;
/// The largest memory a run plans with, in MiB: Lambda's largest size.
pub const MAX_MIB: u64 = 10240;

const MIB: u64 = 1024 * 1024;

/// Where the memory of a run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--memory-mb` (or `SLUICE_MEMORY_MB`).
    Flag,
    /// The cgroup's memory limit.
    Cgroup,
    /// `MemTotal` in `/proc/meminfo`.
    MemTotal,
    /// Nothing could be read: Lambda's default of 256 MiB.
    Default,
}

impl Source {
    /// How the logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Flag => "--memory-mb",
            Source::Cgroup => "cgroup memory limit",
            Source::MemTotal => "MemTotal",
            Source::Default => "default",
        }
    }
}

/// The memory plan of a run: `flag` MiB when given, else the machine's (see the module docs),
/// with the MiB it was made for and where they came from.
pub fn budget(flag: Option<u64>) -> (MemoryBudget, u64, Source) {
    let (mib, source) = match flag {
        Some(mib) => (mib, Source::Flag),
        None => machine_mib(),
    };
    let mib = mib.clamp(MIN_MIB, MAX_MIB);
    (MemoryBudget::for_memory_mib(mib), mib, source)
}

/// The machine's memory in MiB (not yet clamped) and where it came from.
fn machine_mib() -> (u64, Source) {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total(&t));
    let limit = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| cgroup_limit(Path::new("/sys/fs/cgroup"), &t));
    match (limit, total) {
        (Some(limit), Some(total)) if limit < total => (limit / MIB, Source::Cgroup),
        (Some(limit), None) => (limit / MIB, Source::Cgroup),
        (_, Some(total)) => (total / MIB, Source::MemTotal),
        (None, None) => (256, Source::Default),
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The smallest memory limit, in bytes, of the cgroups (and their ancestors) that
/// `proc_cgroup` (the text of `/proc/self/cgroup`) names under `root`; `None` when none sets
/// one.
fn cgroup_limit(root: &Path, proc_cgroup: &str) -> Option<u64> {
    let mut limits = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        for ancestor in ancestors(&dir, path) {
            if let Some(limit) = std::fs::read_to_string(ancestor.join(file))
                .ok()
                .and_then(|t| parse_limit(&t))
            {
                limits.push(limit);
            }
        }
    }
    limits.into_iter().min()
}

/// `dir/path` and each of its parents down to `dir` itself.
fn ancestors(dir: &Path, path: &str) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut current = dir.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        current = current.join(part);
        out.push(current.clone());
    }
    out
}

/// A cgroup limit file's value in bytes: `max` (v2) or v1's "unlimited" (a number near
/// `i64::MAX`, rounded to pages) is no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let text = "MemTotal:       24573952 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(24_573_952 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn no_limit_is_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(256 * MIB));
    }

    #[test]
    fn the_smallest_limit_of_the_cgroup_and_its_ancestors() {
        let root = std::env::temp_dir().join(format!("sluice-cli-cg-{}", uuid::Uuid::new_v4()));
        let leaf = root.join("system.slice/job.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("system.slice/memory.max"), "1073741824\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        let limit = cgroup_limit(&root, "0::/system.slice/job.scope\n");
        assert_eq!(limit, Some(1024 * MIB));
        assert_eq!(cgroup_limit(&root, "0::/\n"), None);
        // v1: only the memory controller's line counts.
        let v1 = root.join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        let text = "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n";
        assert_eq!(cgroup_limit(&root, text), Some(512 * MIB));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn huge_and_tiny_memory_is_clamped_to_lambda_sizes() {
        let (b, mib, _) = budget(Some(1 << 40));
        assert_eq!(mib, MAX_MIB);
        assert_eq!(b, MemoryBudget::for_memory_mib(MAX_MIB));
        let (_, mib, source) = budget(Some(1));
        assert_eq!((mib, source), (MIN_MIB, Source::Flag));
        let (_, mib, _) = budget(None);
        assert!((MIN_MIB..=MAX_MIB).contains(&mib));
    }
}
