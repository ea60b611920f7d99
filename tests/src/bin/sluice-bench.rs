//! `make bench`'s runner (started by `bench/run.sh`, which installs the peers, starts Garage
//! and nginx and sets the `BENCH_*` variables): sluice against the tools users pick instead,
//! in an unconstrained box and Lambda boxes of 128, 256 and 3,538 MB (`BENCH_BOXES` chooses),
//! every output verified.
//!
//! ```text
//! sluice-bench                          run the benchmark (settings: see bench::plan::Settings)
//! sluice-bench sink-alone BUCKET KEY N  the sink-alone limit (run inside a box by the runner)
//! sluice-bench compress FILE N MODE     the compressor-alone limit (idem)
//! ```
//!
//! Writes `<BENCH_OUT>/<date>.json` (every run, medians, ratios, machine) and `<date>.md`, and
//! exits non-zero when a run failed in a way that is not a measurement: sluice not finishing, a
//! wrong output, a peer failing other than by being killed at a memory limit (or, in a full
//! run, by the timeout).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context as _;
use sluice_tests::bench::cell::BoxKind;
use sluice_tests::bench::plan::{Bench, Case, RunRecord, Settings, Status, Tool, configs};
use sluice_tests::bench::{limits, report};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // The limits run on one runtime thread; the compressor's own threads are those of the
        // box's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, set by the runner).
        Some("sink-alone") => current_thread()?.block_on(limits::sink_alone(&args[1..])),
        Some("compress") => current_thread()?.block_on(limits::compress(&args[1..])),
        None | Some("run") => {
            let failed = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run())?;
            if failed > 0 {
                eprintln!("sluice-bench: {failed} run(s) failed (see above)");
                std::process::exit(1);
            }
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "unknown sub-command {other:?}: expected none, `run`, `sink-alone` or `compress`"
        ),
    }
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn mins(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Whether a run's ending counts as a failure of the benchmark (not a measurement).
fn unexpected(r: &RunRecord, smoke: bool) -> bool {
    match r.status {
        Status::Ok => false,
        Status::Failed => true,
        // A peer killed at a box's memory limit, or stopping there with its own
        // out-of-memory error, is a result; sluice killed is a failure.
        Status::Killed | Status::OutOfMemory => !r.config.tool.is_peer(),
        Status::Timeout => smoke || !r.config.tool.is_peer(),
    }
}

async fn run() -> anyhow::Result<usize> {
    let settings = Settings::from_env()?;
    let machine = report::Machine::probe();
    let date = sluice_tests::fixture_api::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    );
    let configs = configs(&settings);
    anyhow::ensure!(!configs.is_empty(), "BENCH_ONLY matches no configuration");
    if let Some(reason) = settings.dlt_reason()
        && configs.iter().any(|c| c.case == Case::RecordsParquet)
    {
        eprintln!("sluice-bench: dlt is left out of records-parquet: {reason}");
    }
    let boxes = settings.boxes.clone();
    let total = configs.len() * boxes.len() * settings.runs;
    eprintln!(
        "sluice-bench: {} configurations x {} boxes ({}) x {} run(s) = {total} runs of {:.3} GiB; \
         machine: {}; load {}",
        configs.len(),
        boxes.len(),
        boxes
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.runs,
        settings.size as f64 / (1u64 << 30) as f64,
        machine.line(),
        machine.load_at_start
    );
    let mut bench = Bench::new(settings.clone()).await?;
    let started = Instant::now();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut step_secs: HashMap<(String, BoxKind), f64> = HashMap::new();
    let mut failed = 0;
    let mut done = 0;
    // Rounds outermost, so that slow drift (other load) spreads over every tool alike, and so
    // the first round gives every step's duration for the ETA.
    for round in 1..=settings.runs {
        for config in &configs {
            for &kind in &boxes {
                let record = bench
                    .run_one(config, kind, round)
                    .await
                    .with_context(|| format!("{} in {}", config.id(), kind.name()))?;
                done += 1;
                step_secs.insert((record.id.clone(), kind), record.step_secs);
                let known: Vec<f64> = step_secs.values().copied().collect();
                let average = known.iter().sum::<f64>() / known.len() as f64;
                let mut remaining = 0.0;
                let mut index = 0;
                for r in 1..=settings.runs {
                    for c in &configs {
                        for &k in &boxes {
                            index += 1;
                            if index > done {
                                let _ = r;
                                remaining +=
                                    step_secs.get(&(c.id(), k)).copied().unwrap_or(average);
                            }
                        }
                    }
                }
                let bad = unexpected(&record, settings.smoke);
                if bad {
                    failed += 1;
                }
                let figures = match record.status {
                    Status::Ok => format!(
                        "{:.1} MiB/s, peak {:.0} MiB, {:.2} CPU s/GiB, out {}{}",
                        record.mib_per_s.unwrap_or(0.0),
                        record.peak_bytes as f64 / 1048576.0,
                        record.cpu_s_per_gib,
                        record
                            .out_bytes
                            .map_or("–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                        record.parquet.as_ref().map_or(String::new(), |p| format!(
                            " (Parquet: {} bytes, {} rows, {} row groups, {} file(s))",
                            record.out_bytes.unwrap_or(0),
                            p.rows,
                            p.row_groups,
                            p.files
                        ))
                    ),
                    _ => format!(
                        "{}{}: {}",
                        if bad { "UNEXPECTED " } else { "" },
                        match record.status {
                            Status::Killed => "killed",
                            Status::OutOfMemory => "out of memory",
                            Status::Timeout => "timeout",
                            _ => "FAILED",
                        },
                        record.error.as_deref().unwrap_or("")
                    ),
                };
                eprintln!(
                    "[{done}/{total}] {} {} run {round}: {:.1} s; {figures} \
                     (step {:.1} s; elapsed {}, ETA {})",
                    record.id,
                    kind.name(),
                    record.secs,
                    record.step_secs,
                    mins(started.elapsed().as_secs_f64()),
                    mins(remaining)
                );
                runs.push(record);
            }
        }
    }
    bench.finish().await?;
    let medians = report::medians(&configs, &runs);
    let ratios = report::ratios(&medians, &settings);
    let day = &date[..10];
    let json = report::to_json(
        &date,
        &machine,
        &settings,
        &runs,
        &medians,
        &ratios,
        started.elapsed().as_secs_f64(),
    );
    std::fs::create_dir_all(&settings.out_dir)?;
    let json_path = settings.out_dir.join(format!("{day}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let chart = format!("bench/results/{day}.png");
    let md = report::to_markdown(
        &date,
        &machine,
        &settings,
        &medians,
        &ratios,
        (!settings.smoke).then_some(chart.as_str()),
    );
    let md_path = settings.out_dir.join(format!("{day}.md"));
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!(
        "sluice-bench: {total} runs in {}; wrote {} and {}",
        mins(started.elapsed().as_secs_f64()),
        json_path.display(),
        md_path.display()
    );
    let sluice_runs = runs
        .iter()
        .filter(|r| matches!(r.config.tool, Tool::Sluice | Tool::SluiceUnsigned))
        .count();
    anyhow::ensure!(
        sluice_runs > 0 || !settings.only.is_empty(),
        "no sluice run happened"
    );
    Ok(failed)
}
