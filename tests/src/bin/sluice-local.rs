//! Runs a sluice function locally the way Lambda would: the release `bootstrap` binary under
//! the Runtime API emulator, inside a memory cgroup the size of the function, against the local
//! Garage and a generated source. Used by `make demo`.
//!
//! ```text
//! sluice-local demo [--size-mib N] [--compression gzip|zstd|none] [--memory-mb M]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use sluice_tests::{
    FixtureServer, Invocation, LambdaProcess, MemoryCgroup, RuntimeApi, S3Server, binary_path,
};

const MIB: u64 = 1024 * 1024;

struct Args {
    size_mib: u64,
    compression: Option<String>,
    memory_mb: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => {}
        _ => bail!(
            "usage: sluice-local demo [--size-mib N] [--compression gzip|zstd|none] [--memory-mb M]"
        ),
    }
    let mut parsed = Args {
        size_mib: 1024,
        compression: Some("gzip".into()),
        memory_mb: 256,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size-mib" => parsed.size_mib = value.parse().context("--size-mib")?,
            "--memory-mb" => parsed.memory_mb = value.parse().context("--memory-mb")?,
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
    let mut job = json!({
        "source": {"http": {"url": fixture.url(&format!("/json?size={size}&seed=42")),
                            "headers": {"Accept": "application/json"}}},
        "destination": {"bucket": bucket, "key": format!("raw/demo/dt={{date}}/{{run_id}}.json{suffix}")}
    });
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
    let summary = match api.invoke(job, Duration::from_secs(900)).await? {
        Invocation::Response(v) => v,
        Invocation::Error {
            error_type,
            error_message,
        } => bail!("{error_type}: {error_message}"),
    };
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
