//! The boxes a benchmark run happens in: a memory, a cpu and a cpuacct cgroup created for that
//! run alone, so peak memory and CPU time count every process of the tool (a whole pipeline)
//! and nothing else.

use std::fs::File;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::cgroup::{CpuCgroup, CpuacctCgroup, MemoryCgroup};

/// A 256 MB Lambda's memory limit.
pub const LAMBDA_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// A 256 MB Lambda's CPU share: 256/1769 of a vCPU, as a CFS quota per [`CFS_PERIOD_US`].
pub const LAMBDA_CPU_QUOTA_US: u64 = 14_500;
/// The CFS period the quotas are given in.
pub const CFS_PERIOD_US: u64 = 100_000;

/// Which limits a run gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum BoxKind {
    /// All cores; memory limited only to 3/4 of the machine's, to protect it (still measured
    /// through cgroups).
    Unconstrained,
    /// `memory.limit_in_bytes=256M`, `cpu.cfs_quota_us=14500` per 100 ms.
    Lambda256,
}

impl BoxKind {
    /// Short name used in ids and tables.
    pub fn name(self) -> &'static str {
        match self {
            BoxKind::Unconstrained => "unconstrained",
            BoxKind::Lambda256 => "lambda-256mb",
        }
    }
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
        let (memory_limit, quota) = match kind {
            // Three quarters of the machine's memory, so that a peer holding a whole large
            // document (json.loads) is stopped before it takes the machine down; all cores.
            BoxKind::Unconstrained => (machine_memory() / 4 * 3, cores * CFS_PERIOD_US),
            BoxKind::Lambda256 => (LAMBDA_MEMORY_BYTES, LAMBDA_CPU_QUOTA_US),
        };
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
