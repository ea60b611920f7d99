//! Runs a sluice function locally the way Lambda would: the release `bootstrap` binary under
//! the Runtime API emulator, inside a memory cgroup the size of the function, against the local
//! Garage and a generated source. Used by `make demo`.
//!
//! ```text
//! sluice-local demo [--size-mib N] [--compression gzip|zstd|none] [--memory-mb M]
//! sluice-local continue [--size-mib N] [--compression gzip|zstd|none] [--invocation-secs S]
//! sluice-local transform [--size-mib N] [--memory-mb M]
//! sluice-local watch [--size-mib N] -- COMMAND [ARGS...]
//! ```
//!
//! `demo` streams a generated JSON document through `ingest-http`; `continue` streams a body
//! that can be resumed (`Accept-Ranges`, a strong ETag) with invocations cut short by
//! `tuning.max_invocation_secs`, and invokes again with each `continue` answer until the job
//! ends, as the state machine does in AWS; `transform` uploads a
//! generated parking-violations CSV (gzip) and hands its S3 event to `transform-s3` running the
//! seed pipeline of `events/transform-s3.pipeline.json`. `watch` (what `make watch` runs)
//! prepares what the sample events in `events/` read ([`sluice_tests::local`]), runs COMMAND
//! (`cargo lambda watch ...`) with the environment the functions need, and stops the servers
//! it started when COMMAND ends or on Ctrl-C.

use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, bail};
use async_compression::tokio::bufread::GzipDecoder;
use serde_json::{Value, json};
use sluice::sink::{self, S3Target, UploadOptions};
use sluice_tests::members::GzipMembers;
use sluice_tests::parking::ParkingCsv;
use sluice_tests::{
    FixtureServer, Invocation, LambdaProcess, MemoryCgroup, RuntimeApi, S3Server, binary_path,
    read_object, workspace_root,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: u64 = 1024 * 1024;

#[derive(PartialEq)]
enum Command {
    Demo,
    Continue,
    Transform,
    Watch,
}

struct Args {
    command: Command,
    size_mib: u64,
    compression: Option<String>,
    memory_mb: u32,
    /// `continue`: `tuning.max_invocation_secs`.
    invocation_secs: u64,
    /// `--invocation-secs` was given (`transform` then continues across invocations).
    invocation_secs_given: bool,
    /// `watch`: the command to run, after `--`.
    command_line: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let command = match args.next().as_deref() {
        Some("demo") => Command::Demo,
        Some("continue") => Command::Continue,
        Some("transform") => Command::Transform,
        Some("watch") => Command::Watch,
        _ => bail!(
            "usage: sluice-local demo [--size-mib N] [--compression gzip|zstd|none] [--memory-mb M]\n       \
             sluice-local continue [--size-mib N] [--compression gzip|zstd|none] [--invocation-secs S]\n       \
             sluice-local transform [--size-mib N] [--memory-mb M] [--invocation-secs S]\n       \
             sluice-local watch [--size-mib N] -- COMMAND [ARGS...]"
        ),
    };
    let mut parsed = Args {
        size_mib: match command {
            Command::Demo | Command::Continue => 1024,
            Command::Transform => 512,
            Command::Watch => 64,
        },
        command,
        compression: Some("gzip".into()),
        memory_mb: 256,
        invocation_secs: 2,
        invocation_secs_given: false,
        command_line: Vec::new(),
    };
    while let Some(flag) = args.next() {
        if flag == "--" {
            parsed.command_line = args.by_ref().collect();
            break;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size-mib" => parsed.size_mib = value.parse().context("--size-mib")?,
            "--memory-mb" => parsed.memory_mb = value.parse().context("--memory-mb")?,
            "--invocation-secs" => {
                parsed.invocation_secs = value.parse().context("--invocation-secs")?;
                parsed.invocation_secs_given = true;
            }
            "--compression" => {
                parsed.compression = (value != "none").then_some(value);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    match args.command {
        Command::Demo | Command::Continue => demo(args).await,
        Command::Watch => watch(args).await,
        Command::Transform => transform(args).await,
    }
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let server = S3Server::garage();
    let bucket = std::env::var("SLUICE_DEMO_BUCKET").unwrap_or_else(|_| "sluice-demo".into());
    let fixture = FixtureServer::start().await;
    let api = RuntimeApi::start().await;
    let limit = u64::from(args.memory_mb) * MIB;
    let cgroup = MemoryCgroup::create("sluice-demo", limit);
    let mut env = server.lambda_env();
    env.push(("AWS_LAMBDA_LOG_FORMAT".into(), "Text".into()));
    // The generated source listens on loopback, which the network policy refuses by default.
    env.push(("SLUICE_ALLOW_PRIVATE_NETWORKS".into(), "true".into()));
    let _function = LambdaProcess::spawn(
        &binary_path("ingest-http"),
        &api,
        &env,
        args.memory_mb,
        cgroup.as_ref(),
    )?;

    let size = args.size_mib * MIB;
    let suffix = match args.compression.as_deref() {
        Some("gzip") => ".gz",
        Some("zstd") => ".zst",
        _ => "",
    };
    let continuing = args.command == Command::Continue;
    let mut job = if continuing {
        json!({
            "source": {"http": {"url": fixture.url(&format!("/ranged?size={size}&seed=42"))}},
            "destination": {"bucket": bucket, "key": format!("raw/continued/dt={{date}}/{{run_id}}.ndjson{suffix}")},
            "tuning": {"max_invocation_secs": args.invocation_secs}
        })
    } else {
        json!({
            "source": {"http": {"url": fixture.url(&format!("/json?size={size}&seed=42")),
                                "headers": {"Accept": "application/json"}}},
            "destination": {"bucket": bucket, "key": format!("raw/demo/dt={{date}}/{{run_id}}.json{suffix}")}
        })
    };
    if let Some(c) = &args.compression {
        job["compression"] = json!(c);
    }
    println!("job spec:\n{}\n", serde_json::to_string_pretty(&job)?);
    println!(
        "running ingest-http ({} MB function{}) on a generated {} MiB JSON document...",
        args.memory_mb,
        if cgroup.is_some() {
            ", memory cgroup enforced"
        } else {
            ", NO cgroup: limit not enforced"
        },
        args.size_mib
    );

    let started = Instant::now();
    let summary = run_to_end(&api, job, |answer| {
        format!(
            "continue after {} bytes in, {} parts uploaded",
            answer["bytes_in"], answer["parts"]
        )
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!("\nsummary:\n{}", serde_json::to_string_pretty(&summary)?);
    if let Some(cg) = &cgroup {
        println!(
            "\nmemory: cgroup peak {:.1} MiB of a {} MB limit; throughput {:.1} MiB/s",
            cg.peak_bytes() as f64 / MIB as f64,
            args.memory_mb,
            size as f64 / MIB as f64 / secs
        );
    }

    let key = summary["key"].as_str().context("summary has a key")?;
    let head = server
        .client()
        .await
        .head_object()
        .bucket(&bucket)
        .key(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .context("HeadObject of the written object")?;
    println!(
        "\nobject: s3://{bucket}/{key}\n  size {} bytes, content-type {}, CRC64NVME {} (S3) / {} (sluice)",
        head.content_length().unwrap_or_default(),
        head.content_type().unwrap_or("-"),
        head.checksum_crc64_nvme().unwrap_or("-"),
        summary["checksum"].as_str().unwrap_or("-"),
    );
    Ok(())
}

async fn transform(args: Args) -> anyhow::Result<()> {
    let server = S3Server::garage();
    let bucket = std::env::var("SLUICE_DEMO_BUCKET").unwrap_or_else(|_| "sluice-demo".into());
    let client = server.client().await;
    let pipeline_path = workspace_root().join("events/transform-s3.pipeline.json");
    let mut pipeline = std::fs::read_to_string(&pipeline_path)
        .with_context(|| format!("reading {}", pipeline_path.display()))?;
    if args.invocation_secs_given {
        let mut p: Value = serde_json::from_str(&pipeline)?;
        p["tuning"]["max_invocation_secs"] = json!(args.invocation_secs);
        pipeline = serde_json::to_string_pretty(&p)?;
    }

    // The source: a generated parking-violations CSV, gzip in independent members of 8 MiB
    // (as pigz --independent or bgzip write it: a continued transform decodes again from the
    // last member before its stop), streamed into Garage.
    let size = args.size_mib * MIB;
    let key = "incoming/parking violations 2026.csv.gz";
    println!(
        "uploading a generated {} MiB parking-violations CSV (gzip) to s3://{bucket}/{key} ...",
        args.size_mib
    );
    let gz = GzipMembers::new(
        ParkingCsv::new(2026, size),
        8 * MIB,
        flate2::Compression::fast(),
    );
    let target = S3Target::new(client.clone(), &bucket, key);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
    let uploaded = sink::upload(Arc::new(target), gz, &options, |e| sluice::Error::Encode {
        codec: "gzip",
        offset: 0,
        source: e,
    })
    .await?;
    println!("  {:.1} MiB compressed", uploaded.bytes as f64 / MIB as f64);

    let api = RuntimeApi::start().await;
    let limit = u64::from(args.memory_mb) * MIB;
    let cgroup = MemoryCgroup::create("sluice-demo-transform", limit);
    let mut env = server.lambda_env();
    env.push(("AWS_LAMBDA_LOG_FORMAT".into(), "Text".into()));
    env.push(("PIPELINE".into(), pipeline.clone()));
    let _function = LambdaProcess::spawn(
        &binary_path("transform-s3"),
        &api,
        &env,
        args.memory_mb,
        cgroup.as_ref(),
    )?;
    // What S3 sends: the key URL-encoded, a space as `+`. A transform that may continue gets
    // what the transform job state machine sends: the key as it is, and `continuable`.
    let notification = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": server.region,
        "eventTime": now_rfc3339(), "eventName": "ObjectCreated:CompleteMultipartUpload",
        "userIdentity": {"principalId": "local"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": key.replace(' ', "+"), "size": uploaded.bytes}}
    }]});
    let event = match args.invocation_secs_given {
        true => json!({"bucket": bucket, "key": key, "continuable": true}),
        false => notification,
    };
    println!("\npipeline ({}):\n{pipeline}", pipeline_path.display());
    let memory = format!(
        "{} MB function{}",
        args.memory_mb,
        if cgroup.is_some() {
            ", memory cgroup enforced"
        } else {
            ", NO cgroup: limit not enforced"
        }
    );
    match args.invocation_secs_given {
        true => println!(
            "the transform job state machine's event {event}; running transform-s3 ({memory}), \
             each invocation cut at {} s ...",
            args.invocation_secs
        ),
        false => println!(
            "S3 event for {:?}; running transform-s3 ({memory}) ...",
            key.replace(' ', "+")
        ),
    }
    if let Some(c) = &cgroup {
        c.reset_peak();
    }
    let answer = run_to_end(&api, event, |answer| {
        let o = &answer["objects"][0];
        format!(
            "continue after {} rows in ({} decoded bytes), {} parts uploaded",
            o["records_in"], o["bytes_decoded"], o["parts"]
        )
    })
    .await?;
    println!("\nsummary:\n{}", serde_json::to_string_pretty(&answer)?);
    if let Some(cg) = &cgroup {
        println!(
            "\nmemory: cgroup peak {:.1} MiB of a {} MB limit",
            cg.peak_bytes() as f64 / MIB as f64,
            args.memory_mb
        );
    }
    let summary: &Value = &answer["objects"][0];
    if let Some(out) = summary["key"].as_str() {
        let body = read_object(&client, &bucket, out).await;
        let mut lines = BufReader::new(GzipDecoder::new(&body[..])).lines();
        println!("\nfirst rows of s3://{bucket}/{out}:");
        for _ in 0..5 {
            match lines.next_line().await? {
                Some(line) => println!("  {line}"),
                None => break,
            }
        }
    }
    if let Some(q) = summary["quarantine_key"].as_str() {
        let body = read_object(&client, &bucket, q).await;
        println!("\nfirst quarantined rows of s3://{bucket}/{q}:");
        for line in String::from_utf8_lossy(&body).lines().take(2) {
            let mut text = line.to_owned();
            text.truncate(300);
            println!("  {text}");
        }
    }
    Ok(())
}

/// Invokes `event`, and again with each answer's `continue` value (what the job state
/// machines do), printing each step with `progress`; the last answer.
async fn run_to_end(
    api: &RuntimeApi,
    mut event: Value,
    progress: impl Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let mut invocations = 0;
    loop {
        let answer = match api.invoke(event, Duration::from_secs(900)).await? {
            Invocation::Response(v) => v,
            Invocation::Error {
                error_type,
                error_message,
            } => bail!("{error_type}: {error_message}"),
        };
        if answer["status"] != "continue" {
            return Ok(answer);
        }
        invocations += 1;
        println!(
            "invocation {invocations}: {}; next event {}",
            progress(&answer),
            answer["continue"]
        );
        event = answer["continue"].clone();
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    sluice_tests::fixture_api::rfc3339(secs)
}

/// `make watch`: the sample events' servers and data, then COMMAND with their environment.
async fn watch(args: Args) -> anyhow::Result<()> {
    let Some((program, rest)) = args.command_line.split_first() else {
        bail!("watch: no command after `--`");
    };
    let server = S3Server::garage();
    let bucket = std::env::var("SLUICE_DEMO_BUCKET").unwrap_or_else(|_| "sluice-demo".into());
    let samples =
        sluice_tests::local::LocalSamples::prepare(&server, &bucket, args.size_mib).await?;
    println!("watch: running {}", args.command_line.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .envs(samples.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // Its own process group, so that stopping it stops the functions it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => Some(status?),
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
    };
    if let Some(pid) = child.id() {
        stop_group(pid, &mut child).await;
    }
    samples.stop().await;
    match status {
        Some(s) if !s.success() => bail!("{program} exited with {s}"),
        _ => Ok(()),
    }
}

/// SIGTERM to the process group `pid` leads, then SIGKILL if it is still there after 5 s.
async fn stop_group(pid: u32, child: &mut tokio::process::Child) {
    let group = format!("-{pid}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", "--", &group])
        .status();
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = child.wait().await;
    }
}
