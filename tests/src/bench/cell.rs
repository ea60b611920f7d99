//! The boxes a benchmark run happens in: a memory, a cpu and a cpuacct cgroup created for that
//! run alone, so peak memory and CPU time count every process of the tool (a whole pipeline)
//! and nothing else. Besides the unconstrained box, each box is a Lambda function's size:
//! its memory, and the CPU Lambda gives that much memory (one vCPU per 1,769 MB).

use std::fs::File;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::cgroup::{CpuCgroup, CpuacctCgroup, MemoryCgroup};

/// The CFS period the quotas are given in.
pub const CFS_PERIOD_US: u64 = 100_000;
/// Lambda gives a function one vCPU per this many MB of memory, and CPU in proportion below.
pub const LAMBDA_MIB_PER_VCPU: u64 = 1769;
/// The 256 MB box's CPU quota per [`CFS_PERIOD_US`]. 256/1769 of a vCPU is 14,471 µs
/// ([`quota_for_memory_mib`]`(256)`); every table so far was measured with it rounded to
/// 0.1 ms, 14,500 µs, and the 256 MB box keeps that so its figures stay comparable with them.
pub const LAMBDA_256_CPU_QUOTA_US: u64 = 14_500;
/// What a sluice bootstrap is configured with (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`), and what
/// the limits' memory plan is, in the unconstrained box: the functions' default.
pub const UNCONSTRAINED_FUNCTION_MIB: u64 = 256;

/// The CPU share Lambda gives a function of `mib` MB, as a CFS quota per [`CFS_PERIOD_US`]:
/// `mib / 1769` of a vCPU, rounded to the microsecond (7,236 µs at 128 MB, 200,000 at
/// 3,538 MB: two vCPUs).
pub fn quota_for_memory_mib(mib: u64) -> u64 {
    (mib * CFS_PERIOD_US + LAMBDA_MIB_PER_VCPU / 2) / LAMBDA_MIB_PER_VCPU
}

/// Which limits a run gets. The order is the order of the report's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum BoxKind {
    /// All cores; memory limited only to 3/4 of the machine's, to protect it (still measured
    /// through cgroups).
    Unconstrained,
    /// `memory.limit_in_bytes=128M`, `cpu.cfs_quota_us=7236` per 100 ms (128/1769 of a vCPU).
    Lambda128,
    /// `memory.limit_in_bytes=256M`, `cpu.cfs_quota_us=14500` per 100 ms.
    Lambda256,
    /// `memory.limit_in_bytes=3538M`, `cpu.cfs_quota_us=200000` per 100 ms: two vCPUs, the
    /// smallest function that gets more than one.
    Lambda3538,
}

impl BoxKind {
    /// Every box, in the report's order.
    pub const ALL: [BoxKind; 4] = [
        BoxKind::Unconstrained,
        BoxKind::Lambda128,
        BoxKind::Lambda256,
        BoxKind::Lambda3538,
    ];

    /// Short name used in ids, tables and `BENCH_BOXES`.
    pub fn name(self) -> &'static str {
        match self {
            BoxKind::Unconstrained => "unconstrained",
            BoxKind::Lambda128 => "lambda-128mb",
            BoxKind::Lambda256 => "lambda-256mb",
            BoxKind::Lambda3538 => "lambda-3538mb",
        }
    }

    /// The Lambda function's memory this box stands for, MiB (`None`: unconstrained).
    pub fn lambda_memory_mib(self) -> Option<u64> {
        match self {
            BoxKind::Unconstrained => None,
            BoxKind::Lambda128 => Some(128),
            BoxKind::Lambda256 => Some(256),
            BoxKind::Lambda3538 => Some(3538),
        }
    }

    /// The memory sluice is told it has in this box (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE` of the
    /// bootstraps, the limits' `MemoryBudget`): the box's, or
    /// [`UNCONSTRAINED_FUNCTION_MIB`] when unconstrained.
    pub fn function_memory_mib(self) -> u64 {
        self.lambda_memory_mib()
            .unwrap_or(UNCONSTRAINED_FUNCTION_MIB)
    }

    /// What sluice is told of its CPU in this box (`SLUICE_VCPUS`), when Lambda's share for the
    /// memory it is told it has would be wrong: the unconstrained box plans memory as a 256 MB
    /// function but may use every core.
    pub fn sluice_vcpus(self) -> Option<String> {
        (self == BoxKind::Unconstrained).then(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string()
        })
    }

    /// The box's CFS quota per [`CFS_PERIOD_US`] on a machine of `cores` cores.
    pub fn cpu_quota_us(self, cores: u64) -> u64 {
        match self {
            BoxKind::Unconstrained => cores * CFS_PERIOD_US,
            BoxKind::Lambda256 => LAMBDA_256_CPU_QUOTA_US,
            lambda => quota_for_memory_mib(lambda.function_memory_mib()),
        }
    }

    /// The title of the box's table: `Lambda 128 MB (128 MiB, 7.2% of a core)`.
    pub fn title(self) -> String {
        let Some(mib) = self.lambda_memory_mib() else {
            return "Unconstrained".to_owned();
        };
        let quota = self.cpu_quota_us(1);
        let cpu = if quota >= CFS_PERIOD_US && quota % CFS_PERIOD_US == 0 {
            format!("{} vCPUs", quota / CFS_PERIOD_US)
        } else {
            format!(
                "{:.1}% of a core",
                quota as f64 * 100.0 / CFS_PERIOD_US as f64
            )
        };
        let mib = thousands(mib);
        format!("Lambda {mib} MB ({mib} MiB, {cpu})")
    }

    /// The boxes named in `list` (`BENCH_BOXES`: comma-separated [`BoxKind::name`]s), in the
    /// report's order, each once; every box when `list` is empty.
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<BoxKind>> {
        let mut chosen = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let kind = BoxKind::ALL
                .into_iter()
                .find(|k| k.name().eq_ignore_ascii_case(name))
                .with_context(|| {
                    format!(
                        "BENCH_BOXES: unknown box {name:?}; the boxes are {}",
                        BoxKind::ALL.map(BoxKind::name).join(", ")
                    )
                })?;
            chosen.push(kind);
        }
        if chosen.is_empty() {
            return Ok(BoxKind::ALL.to_vec());
        }
        chosen.sort();
        chosen.dedup();
        Ok(chosen)
    }
}

/// `3538` as `3,538`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine's memory (`MemTotal`), or 16 GiB when it cannot be read.
fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(16 << 30, |kib| kib * 1024)
}

/// The cgroups of one run.
pub struct Cell {
    /// Which box.
    pub kind: BoxKind,
    memory: MemoryCgroup,
    _cpu: CpuCgroup,
    cpuacct: CpuacctCgroup,
}

/// What a cell measured once its processes are done.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// `memory.max_usage_in_bytes`: peak of all processes together (RSS + page cache).
    pub peak_bytes: u64,
    /// `cpuacct.usage`: CPU time of all processes together.
    pub cpu_ns: u64,
    /// Whether the OOM killer killed a process of the cell.
    pub oom_killed: bool,
}

impl Cell {
    /// Creates the three cgroups of a `kind` box. Fails when cgroup v1 control is unavailable
    /// (the benchmark means nothing without it).
    pub fn create(kind: BoxKind, label: &str) -> anyhow::Result<Cell> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let memory_limit = match kind.lambda_memory_mib() {
            Some(mib) => mib << 20,
            // Three quarters of the machine's memory, so that a peer holding a whole large
            // document (json.loads) is stopped before it takes the machine down; all cores.
            None => machine_memory() / 4 * 3,
        };
        let quota = kind.cpu_quota_us(cores);
        let name = format!("bench-{label}");
        let memory = MemoryCgroup::create(&name, memory_limit)
            .context("memory cgroup (needs root and cgroup v1)")?;
        let cpu = CpuCgroup::create(&name, quota, CFS_PERIOD_US)
            .context("cpu cgroup (needs root and cgroup v1)")?;
        let cpuacct = CpuacctCgroup::create(&name).context("cpuacct cgroup")?;
        Ok(Cell {
            kind,
            memory,
            _cpu: cpu,
            cpuacct,
        })
    }

    /// The `cgroup.procs` files a process must join to be inside the cell.
    pub fn procs(&self) -> Vec<PathBuf> {
        vec![
            self.memory.procs_path(),
            self._cpu.procs_path(),
            self.cpuacct.procs_path(),
        ]
    }

    /// The figures so far.
    pub fn usage(&self) -> Usage {
        Usage {
            peak_bytes: self.memory.peak_bytes(),
            cpu_ns: self.cpuacct.usage_ns(),
            oom_killed: self.memory.oom_killed(),
        }
    }

    /// A command that first moves itself into the cell (`sh` writes its pid into every
    /// `cgroup.procs`, then `exec`s the program with the same pid), in its own process group,
    /// stdout and stderr to files in `log_dir`.
    pub fn command(&self, program: &Path, args: &[String], log_dir: &Path) -> anyhow::Result<Cmd> {
        let mut script = String::new();
        for procs in self.procs() {
            let procs = procs.to_str().context("cgroup path is not UTF-8")?;
            if procs.contains('\'') {
                bail!("cgroup path contains a quote: {procs}");
            }
            script.push_str(&format!("echo $$ > '{procs}' && "));
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(program).args(args);
        command.process_group(0).stdin(Stdio::null());
        let stdout = log_dir.join("stdout");
        let stderr = log_dir.join("stderr");
        command.stdout(File::create(&stdout)?);
        command.stderr(File::create(&stderr)?);
        Ok(Cmd {
            command,
            stdout,
            stderr,
        })
    }
}

/// A command prepared by [`Cell::command`].
pub struct Cmd {
    /// The command (add environment variables before [`Cmd::run`]).
    pub command: Command,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// How a process run ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status; `None` when it was killed for passing the timeout.
    pub status: Option<ExitStatus>,
    /// Wall time from spawn to exit (or to the timeout).
    pub elapsed: Duration,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// The last 2 KB of what it wrote to stderr.
    pub stderr_tail: String,
}

impl Finished {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// "exit status 1", "killed by signal 9", "timed out".
    pub fn describe(&self) -> String {
        match self.status {
            None => "timed out".to_owned(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => s.to_string(),
            },
        }
    }
}

impl Cmd {
    /// Runs the command to completion, killing its whole process group after `timeout`.
    pub fn run(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let start = Instant::now();
        let mut child: Child = self.command.spawn().context("spawning a benchmark tool")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > timeout {
                kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        // A pipeline's other members may still be exiting: wait for the group to empty.
        kill_group(&mut child);
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let stderr = std::fs::read(&self.stderr).unwrap_or_default();
        let tail = &stderr[stderr.len().saturating_sub(2048)..];
        Ok(Finished {
            status,
            elapsed,
            stdout,
            stderr_tail: String::from_utf8_lossy(tail).trim().to_owned(),
        })
    }
}

/// SIGKILL to the child's process group (harmless when it is already gone), then reaps it.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-9", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quotas_follow_lambdas_memory_to_vcpu_ratio() {
        assert_eq!(quota_for_memory_mib(128), 7_236);
        assert_eq!(quota_for_memory_mib(1769), CFS_PERIOD_US);
        assert_eq!(quota_for_memory_mib(3538), 2 * CFS_PERIOD_US);
        // 256/1769 of a vCPU is 14,471 µs: the 256 MB box keeps the 14,500 its tables were
        // measured with, the same share to 0.1 ms.
        assert_eq!(quota_for_memory_mib(256), 14_471);
        assert_eq!((quota_for_memory_mib(256) + 50) / 100 * 100, 14_500);
        assert_eq!(BoxKind::Lambda256.cpu_quota_us(2), LAMBDA_256_CPU_QUOTA_US);
        assert_eq!(BoxKind::Lambda128.cpu_quota_us(2), 7_236);
        assert_eq!(BoxKind::Lambda3538.cpu_quota_us(2), 200_000);
        assert_eq!(BoxKind::Unconstrained.cpu_quota_us(8), 800_000);
    }

    #[test]
    fn boxes_tell_sluice_their_memory() {
        let mib = BoxKind::ALL.map(BoxKind::function_memory_mib);
        assert_eq!(mib, [UNCONSTRAINED_FUNCTION_MIB, 128, 256, 3538]);
    }

    #[test]
    fn box_titles_give_memory_and_cpu() {
        let titles = BoxKind::ALL.map(BoxKind::title);
        assert_eq!(
            titles,
            [
                "Unconstrained",
                "Lambda 128 MB (128 MiB, 7.2% of a core)",
                "Lambda 256 MB (256 MiB, 14.5% of a core)",
                "Lambda 3,538 MB (3,538 MiB, 2 vCPUs)",
            ]
        );
        assert_eq!(thousands(10_240), "10,240");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn bench_boxes_names_boxes_in_the_reports_order() {
        assert_eq!(BoxKind::parse_list("").unwrap(), BoxKind::ALL);
        assert_eq!(BoxKind::parse_list(" , ").unwrap(), BoxKind::ALL);
        assert_eq!(
            BoxKind::parse_list("unconstrained,lambda-256mb").unwrap(),
            [BoxKind::Unconstrained, BoxKind::Lambda256]
        );
        assert_eq!(
            BoxKind::parse_list(" lambda-3538mb , lambda-128mb,lambda-3538mb").unwrap(),
            [BoxKind::Lambda128, BoxKind::Lambda3538]
        );
        assert_eq!(
            BoxKind::parse_list("Lambda-128MB").unwrap(),
            [BoxKind::Lambda128]
        );
        for kind in BoxKind::ALL {
            assert_eq!(BoxKind::parse_list(kind.name()).unwrap(), [kind]);
        }
        let err = BoxKind::parse_list("unconstrained,lambda-512mb")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"lambda-512mb\""), "{err}");
        assert!(err.contains("lambda-3538mb"), "{err}");
    }
}
