//! Running a built Lambda binary (`bootstrap`) as a child process against a [`RuntimeApi`],
//! optionally inside cgroups that enforce Lambda's memory limit.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cgroup::MemoryCgroup;
use crate::runtime_api::RuntimeApi;
use crate::workspace_root;

/// How many lines of output [`LambdaProcess::logs`] keeps.
pub const LOG_LINES: usize = 200;
/// Longer output lines are cut to this many bytes.
const MAX_LINE: usize = 16 * 1024;

/// The path of a built binary: `$SLUICE_BIN_DIR/<name>` when that is set, else
/// `<workspace>/target/release/<name>` (or `$CARGO_TARGET_DIR/release/<name>`).
///
/// Panics with "build it first: cargo build --release -p <name>" when it does not exist.
pub fn binary_path(name: &str) -> PathBuf {
    let path = match std::env::var_os("SLUICE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|dir| {
                    if dir.is_relative() {
                        workspace_root().join(dir)
                    } else {
                        dir
                    }
                })
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("release").join(name)
        }
    };
    assert!(
        path.is_file(),
        "{} not found: build it first: cargo build --release -p {name}",
        path.display()
    );
    path
}

type Logs = Arc<Mutex<VecDeque<String>>>;

/// A Lambda binary running against a [`RuntimeApi`]; killed when dropped.
///
/// Its stdout and stderr are echoed to the test's stderr (prefixed with the binary's name) and
/// the last [`LOG_LINES`] lines are kept for [`LambdaProcess::logs`].
pub struct LambdaProcess {
    name: String,
    child: Arc<Mutex<Child>>,
    logs: Logs,
    readers: Vec<JoinHandle<()>>,
    transcripts: Vec<PathBuf>,
}

impl LambdaProcess {
    /// Starts `binary` as a Lambda function of `memory_mb` MB served by `runtime_api`.
    ///
    /// The environment is cleared, then set to: `PATH`, `RUST_LOG`, `RUST_BACKTRACE` (when set
    /// for the test), `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME` (the binary's file
    /// name), `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_FUNCTION_VERSION=$LATEST`,
    /// `AWS_LAMBDA_LOG_FORMAT=JSON`, `AWS_EC2_METADATA_DISABLED=true`, then `env`, which
    /// overrides any of them. With a `cgroup`, the process is moved into it before `exec`, so
    /// all of its memory is charged there.
    pub fn spawn(
        binary: &Path,
        runtime_api: &RuntimeApi,
        env: &[(String, String)],
        memory_mb: u32,
        cgroup: Option<&MemoryCgroup>,
    ) -> anyhow::Result<Self> {
        let procs: Vec<PathBuf> = cgroup.map(MemoryCgroup::procs_path).into_iter().collect();
        Self::spawn_in(binary, runtime_api, env, memory_mb, &procs)
    }

    /// Like [`LambdaProcess::spawn`], but joins every cgroup whose `cgroup.procs` file is
    /// listed (for example a `MemoryCgroup` and a `CpuCgroup`).
    pub fn spawn_in(
        binary: &Path,
        runtime_api: &RuntimeApi,
        env: &[(String, String)],
        memory_mb: u32,
        cgroup_procs: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "function".to_owned());
        let mut command = if cgroup_procs.is_empty() {
            Command::new(binary)
        } else {
            // `sh` moves itself into the cgroups, then becomes the binary (same pid).
            let mut script = String::new();
            for procs in cgroup_procs {
                let procs = procs.to_str().context("cgroup path is not UTF-8")?;
                anyhow::ensure!(
                    !procs.contains('\''),
                    "cgroup path contains a quote: {procs}"
                );
                script.push_str(&format!("echo $$ > '{procs}' && "));
            }
            script.push_str("exec \"$0\" \"$@\"");
            let mut command = Command::new("sh");
            command.arg("-c").arg(script).arg(binary);
            command
        };
        command.env_clear();
        command.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        );
        for inherited in ["RUST_LOG", "RUST_BACKTRACE", "TZ"] {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (key, value) in env {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, so that `kill` also reaches anything it started.
        command.process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        let logs: Logs = Arc::default();
        let mut readers = Vec::new();
        static TRANSCRIPTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = TRANSCRIPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let transcripts: Vec<PathBuf> = ["stdout", "stderr"]
            .iter()
            .map(|s| {
                std::env::temp_dir().join(format!("sluice-{name}-{}-{n}.{s}", std::process::id()))
            })
            .collect();
        if let Some(stdout) = child.stdout.take() {
            readers.push(spawn_reader(&name, stdout, logs.clone(), &transcripts[0])?);
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(spawn_reader(&name, stderr, logs.clone(), &transcripts[1])?);
        }
        let child = Arc::new(Mutex::new(child));
        runtime_api.attach_process(&name, exit_check(Arc::downgrade(&child)));
        Ok(LambdaProcess {
            name,
            child,
            logs,
            readers,
            transcripts,
        })
    }

    /// The binary's file name (also its `AWS_LAMBDA_FUNCTION_NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The last [`LOG_LINES`] lines the process wrote to stdout and stderr, interleaved in the
    /// order they were read.
    pub fn logs(&self) -> String {
        let logs = self.logs.lock().unwrap();
        let mut text = String::new();
        for line in logs.iter() {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Kills the process (and its process group) and waits for it; gives its output up to a
    /// second to drain.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let status = {
            let mut child = self.child.lock().unwrap();
            if child.try_wait().ok().flatten().is_none() {
                let group = format!("-{}", child.id());
                let _ = Command::new("sh")
                    .args(["-c", "kill -9 \"$0\" 2>/dev/null", &group])
                    .status();
                let _ = child.kill();
            }
            child.wait().ok()
        };
        let until = Instant::now() + Duration::from_secs(1);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.readers.retain(|r| !r.is_finished());
        status
    }
}

impl LambdaProcess {
    /// Everything the process wrote so far, byte for byte: all of stdout, then all of stderr
    /// (each kept whole in a temporary file, unlike [`LambdaProcess::logs`]). For tests that
    /// must check every line, such as the secret canary.
    pub fn transcript(&self) -> String {
        self.transcripts
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        self.kill();
        for p in &self.transcripts {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn exit_check(child: Weak<Mutex<Child>>) -> crate::runtime_api::ExitCheck {
    Box::new(move || {
        let Some(child) = child.upgrade() else {
            return Some("the LambdaProcess was dropped".to_owned());
        };
        let status = child.lock().unwrap().try_wait().ok().flatten();
        status.map(|status| status.to_string())
    })
}

fn spawn_reader(
    name: &str,
    pipe: impl Read + Send + 'static,
    logs: Logs,
    transcript: &Path,
) -> anyhow::Result<JoinHandle<()>> {
    let prefix = format!("[{name}]");
    let mut file = std::fs::File::create(transcript)
        .with_context(|| format!("creating {}", transcript.display()))?;
    std::thread::Builder::new()
        .name(format!("{name}-output"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader
                    .by_ref()
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut raw)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = std::io::Write::write_all(&mut file, &raw);
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                eprintln!("{prefix} {line}");
                let mut logs = logs.lock().unwrap();
                if logs.len() == LOG_LINES {
                    logs.pop_front();
                }
                logs.push_back(line.to_owned());
            }
        })
        .context("spawning an output reader thread")
}
