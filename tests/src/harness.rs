//! A built function binary driven through the Runtime API emulator against Garage and the
//! fixture server: the set-up every Lambda-level test shares.

use std::path::PathBuf;
use std::time::Duration;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use crate::{
    FixtureServer, Invocation, LambdaProcess, MemoryCgroup, RuntimeApi, S3Server, binary_path,
    object_exists, object_stream, uploads_in_progress,
};

/// One function instance with its own Runtime API, a fixture server and a fresh bucket.
pub struct Harness {
    /// The function's binary name and environment, to start it again.
    function: String,
    env: Vec<(String, String)>,
    cgroup_procs: Vec<PathBuf>,
    /// The Runtime API the function polls.
    pub api: RuntimeApi,
    /// The function's process.
    pub process: LambdaProcess,
    /// The HTTP fixture server.
    pub fixture: FixtureServer,
    /// The S3 server (Garage).
    pub server: S3Server,
    /// A fresh bucket for this harness.
    pub bucket: String,
}

impl Harness {
    /// Starts `function` (a release binary) as a 256 MB function with loopback sources allowed.
    pub async fn start(function: &str, label: &str, cgroup: Option<&MemoryCgroup>) -> Harness {
        Self::start_with(
            function,
            label,
            cgroup,
            &[("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")],
        )
        .await
    }

    /// Like [`Harness::start`] with extra environment variables instead of the default ones.
    pub async fn start_with(
        function: &str,
        label: &str,
        cgroup: Option<&MemoryCgroup>,
        extra_env: &[(&str, &str)],
    ) -> Harness {
        let procs: Vec<PathBuf> = cgroup.map(MemoryCgroup::procs_path).into_iter().collect();
        Self::start_in(function, label, &procs, extra_env).await
    }

    /// Like [`Harness::start_with`], the process joining every cgroup whose `cgroup.procs`
    /// is listed (a [`MemoryCgroup`] and a [`crate::CpuCgroup`]: the Lambda box).
    pub async fn start_in(
        function: &str,
        label: &str,
        cgroup_procs: &[PathBuf],
        extra_env: &[(&str, &str)],
    ) -> Harness {
        let server = S3Server::garage();
        let bucket = server.fresh_bucket(label).await.unwrap();
        let fixture = FixtureServer::start().await;
        let api = RuntimeApi::start().await;
        let mut env = server.lambda_env();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let process =
            LambdaProcess::spawn_in(&binary_path(function), &api, &env, 256, cgroup_procs).unwrap();
        Harness {
            function: function.to_owned(),
            env,
            cgroup_procs: cgroup_procs.to_vec(),
            api,
            process,
            fixture,
            server,
            bucket,
        }
    }

    /// A byte-copy job from fixture `path` to `key` in the harness bucket.
    pub fn job(&self, path: &str, key: &str) -> Value {
        json!({
            "source": {"http": {"url": self.fixture.url(path)}},
            "destination": {"bucket": self.bucket, "key": key}
        })
    }

    /// [`restart`](Self::restart) with `name` set to `value` in the function's environment,
    /// as a deployment that changed it does.
    pub fn restart_with(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
        self.restart();
    }

    /// Kills the function's process (SIGKILL) and starts a new one on the same Runtime API:
    /// the next invocation is a cold start, as after a crash.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = LambdaProcess::spawn_in(
            &binary_path(&self.function),
            &self.api,
            &self.env,
            256,
            &self.cgroup_procs,
        )
        .unwrap();
    }

    /// Runs a job to its end the way the state machine does: invokes `event`, and while the
    /// answer says `"status": "continue"`, invokes again with its `continue` value. Every
    /// invocation gets `timeout`. Returns every answer, the last one last; panics on an
    /// error or after `max_invocations`.
    pub async fn run_to_end(
        &self,
        event: Value,
        timeout: Duration,
        max_invocations: usize,
    ) -> Vec<Value> {
        let mut answers = Vec::new();
        let mut event = event;
        loop {
            assert!(
                answers.len() < max_invocations,
                "still continuing after {max_invocations} invocations: {:?}",
                answers.last()
            );
            let answer = response(self.invoke(event, timeout).await);
            let next = (answer["status"] == "continue").then(|| answer["continue"].clone());
            answers.push(answer);
            match next {
                Some(next) => event = next,
                None => return answers,
            }
        }
    }

    /// The keys under `prefix` in the harness bucket.
    pub async fn keys_under(&self, prefix: &str) -> Vec<String> {
        let client = self.server.client().await;
        let listed = client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// The objects under `prefix` (run manifests and quarantines left out), sorted, once
    /// asserted to be exactly those the run manifest at `manifest` lists.
    pub async fn objects_of_manifest(&self, manifest: &str, prefix: &str) -> Vec<String> {
        let client = self.server.client().await;
        let body = crate::read_object(&client, &self.bucket, manifest).await;
        let doc: Value = serde_json::from_slice(&body).expect("the manifest is JSON");
        let mut listed: Vec<String> = doc["objects"]
            .as_array()
            .expect("the manifest lists objects")
            .iter()
            .map(|o| o["key"].as_str().expect("each object has a key").to_owned())
            .collect();
        listed.sort();
        let mut stored: Vec<String> = self
            .keys_under(prefix)
            .await
            .into_iter()
            .filter(|k| !k.contains("_manifests/") && !k.contains("_quarantine/"))
            .collect();
        stored.sort();
        assert_eq!(
            listed, stored,
            "the manifest {manifest} lists other objects than are stored under {prefix}"
        );
        stored
    }

    /// Invokes the function with `event` and a deadline `timeout` from now.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> Invocation {
        self.api.invoke(event, timeout).await.unwrap()
    }

    /// Asserts no object at `key` and no multipart upload in progress in the bucket.
    pub async fn assert_nothing_written(&self, key: &str) {
        let client = self.server.client().await;
        assert!(
            !object_exists(&client, &self.bucket, key).await,
            "object {key} exists"
        );
        let open = uploads_in_progress(&client, &self.bucket).await;
        assert!(open.is_empty(), "uploads left in progress: {open:?}");
    }

    /// The object at `key` read back through `decode` (gzip members and zstd frames all read).
    pub async fn decoded_reader(
        &self,
        key: &str,
        decode: Decode,
    ) -> Box<dyn AsyncRead + Unpin + Send> {
        let client = self.server.client().await;
        let raw =
            BufReader::with_capacity(1 << 20, object_stream(&client, &self.bucket, key).await);
        match decode {
            Decode::None => Box::new(raw),
            Decode::Gzip => {
                let mut d = GzipDecoder::new(raw);
                d.multiple_members(true);
                Box::new(d)
            }
            Decode::Zstd => {
                let mut d = ZstdDecoder::new(raw);
                d.multiple_members(true);
                Box::new(d)
            }
        }
    }

    /// Asserts the job left nothing under `_sluice/` (no checkpoint) and no open upload.
    pub async fn assert_clean(&self) {
        let left = self.keys_under("_sluice/").await;
        assert!(left.is_empty(), "checkpoint objects left: {left:?}");
        let client = self.server.client().await;
        let open = uploads_in_progress(&client, &self.bucket).await;
        assert!(open.is_empty(), "uploads left in progress: {open:?}");
    }

    /// Streams the object back through `decode` and returns the CRC64NVME and length of what
    /// comes out.
    pub async fn decoded_crc(&self, key: &str, decode: Decode) -> (u64, u64) {
        let mut reader = self.decoded_reader(key, decode).await;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0;
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            len += n as u64;
        }
        (digest.finalize(), len)
    }

    /// The object at `key`, decoded, whole (for objects of test size).
    pub async fn decoded(&self, key: &str, decode: Decode) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = self.decoded_reader(key, decode).await;
        reader.read_to_end(&mut out).await.unwrap();
        out
    }
}

/// The memory and CPU cgroups of a 256 MB function (a 256 MiB memory limit and 256/1769 of a
/// vCPU); either may be missing (a warning says so).
pub struct LambdaBox {
    /// The memory cgroup.
    pub memory: Option<MemoryCgroup>,
    /// The CPU cgroup.
    pub cpu: Option<crate::CpuCgroup>,
}

impl LambdaBox {
    /// Creates both cgroups under `name`.
    pub fn create(name: &str) -> LambdaBox {
        LambdaBox {
            memory: MemoryCgroup::create(name, 256 * 1024 * 1024),
            cpu: crate::CpuCgroup::create(name, 14_500, 100_000),
        }
    }

    /// The `cgroup.procs` files a process joins ([`Harness::start_in`]).
    pub fn procs(&self) -> Vec<PathBuf> {
        let memory = self.memory.as_ref().map(MemoryCgroup::procs_path);
        let cpu = self.cpu.as_ref().map(crate::CpuCgroup::procs_path);
        memory.into_iter().chain(cpu).collect()
    }

    /// Starts the memory cgroup's peak afresh (a run measured on its own).
    pub fn reset_peak(&self) {
        if let Some(m) = &self.memory {
            m.reset_peak();
        }
    }

    /// The memory cgroup's peak in MiB (`None` without one); panics if it hit its limit.
    pub fn peak_mib(&self) -> Option<f64> {
        let memory = self.memory.as_ref()?;
        assert!(!memory.oom_killed(), "the function hit the memory limit");
        Some(memory.peak_bytes() as f64 / (1024.0 * 1024.0))
    }
}

/// How to decode an object read back.
#[derive(Clone, Copy, Debug)]
pub enum Decode {
    /// As stored.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The response of a successful invocation; panics with the error otherwise.
pub fn response(inv: Invocation) -> Value {
    match inv {
        Invocation::Response(v) => v,
        Invocation::Error {
            error_type,
            error_message,
        } => panic!("function failed: {error_type}: {error_message}"),
    }
}

/// `(errorType, errorMessage)` of a failed invocation; panics on success.
pub fn error(inv: Invocation) -> (String, String) {
    match inv {
        Invocation::Error {
            error_type,
            error_message,
        } => (error_type, error_message),
        Invocation::Response(v) => panic!("expected an error, got {v}"),
    }
}
