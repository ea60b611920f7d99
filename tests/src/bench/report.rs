//! Medians, sluice's ratios to the best peer, and the outputs: `<date>.json` (every run, the
//! medians, the machine) and `<date>.md` (the tables the README shows).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use super::cell::{BoxKind, CFS_PERIOD_US, thousands};
use super::plan::{
    Case, Config, PARQUET_MODE, ParquetFacts, RunRecord, Settings, Status, Tool, USUAL_GZIP_LEVEL,
};

const MIB: f64 = 1024.0 * 1024.0;

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// `/proc/loadavg` when the run started.
    pub load_at_start: String,
}

impl Machine {
    /// Reads the machine's description from `/proc`.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            memory_mib: memory_kib / 1024,
            load_at_start: load(),
        }
    }

    /// One line: `AMD EPYC, 2 cores, 23 GiB, Linux 6.1`.
    pub fn line(&self) -> String {
        format!(
            "{}, {} cores, {} GiB RAM, Linux {}",
            self.cpu,
            self.cores,
            self.memory_mib / 1024,
            self.kernel
        )
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `/proc/loadavg`'s first three fields.
pub fn load() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The medians of one configuration in one box.
#[derive(Clone, Debug, Serialize)]
pub struct Median {
    /// `case/mode/tool`.
    pub id: String,
    /// The configuration.
    pub config: Config,
    /// The box.
    #[serde(rename = "box")]
    pub box_kind: BoxKind,
    /// Runs made.
    pub runs: usize,
    /// Runs that finished with a verified output.
    pub ok: usize,
    /// `ok`, or how the others ended (`killed 3/3`, `failed 1/3, ok 2/3`).
    pub outcome: String,
    /// Median MiB/s of source, over the ok runs.
    pub mib_per_s: Option<f64>,
    /// Median source rows per second, over the ok runs (records, transform, export).
    pub rows_per_s: Option<f64>,
    /// Median peak memory, bytes, over the ok runs (over all runs when none was ok).
    pub peak_bytes: Option<u64>,
    /// Median CPU seconds per GiB of source, over the ok runs.
    pub cpu_s_per_gib: Option<f64>,
    /// Median output size, bytes.
    pub out_bytes: Option<u64>,
    /// The Parquet output of the first verified run (Parquet cases).
    pub parquet: Option<ParquetFacts>,
}

fn median_f(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians per configuration and box, in the order the configurations were run.
pub fn medians(configs: &[Config], runs: &[RunRecord]) -> Vec<Median> {
    let mut out = Vec::new();
    for config in configs {
        for kind in BoxKind::ALL {
            let mine: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.config == *config && r.box_kind == kind)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let ok: Vec<&RunRecord> = mine
                .iter()
                .copied()
                .filter(|r| r.status == Status::Ok)
                .collect();
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &mine {
                *counts.entry(status_name(r.status)).or_default() += 1;
            }
            let outcome = if ok.len() == mine.len() {
                "ok".to_owned()
            } else {
                counts
                    .iter()
                    .map(|(s, n)| format!("{s} {n}/{}", mine.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let peaks_from = if ok.is_empty() { &mine } else { &ok };
            out.push(Median {
                id: config.id(),
                config: config.clone(),
                box_kind: kind,
                runs: mine.len(),
                ok: ok.len(),
                outcome,
                mib_per_s: median_f(ok.iter().filter_map(|r| r.mib_per_s).collect()),
                rows_per_s: median_f(ok.iter().filter_map(|r| r.rows_per_s).collect()),
                peak_bytes: median_f(peaks_from.iter().map(|r| r.peak_bytes as f64).collect())
                    .map(|v| v as u64),
                cpu_s_per_gib: median_f(ok.iter().map(|r| r.cpu_s_per_gib).collect()),
                out_bytes: median_f(
                    ok.iter()
                        .filter_map(|r| r.out_bytes.map(|b| b as f64))
                        .collect(),
                )
                .map(|v| v as u64),
                parquet: ok.iter().find_map(|r| r.parquet.clone()),
            });
        }
    }
    out
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Killed => "killed",
        Status::OutOfMemory => "out of memory",
        Status::Timeout => "timeout",
        Status::Failed => "FAILED",
    }
}

/// sluice against the best peer of a comparison, in one box.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// What is compared, e.g. `ingest none` or `ingest sluice gzip-1 vs peers gzip-6`.
    pub comparison: String,
    /// The box.
    #[serde(rename = "box")]
    pub box_kind: BoxKind,
    /// sluice's MiB/s over the fastest peer's (higher is better for sluice).
    pub throughput: Option<f64>,
    /// The fastest peer.
    pub fastest_peer: Option<String>,
    /// sluice's peak over the smallest peer peak (lower is better).
    pub peak: Option<f64>,
    /// The leanest peer.
    pub leanest_peer: Option<String>,
    /// sluice's CPU s/GiB over the lowest peer's (lower is better).
    pub cpu: Option<f64>,
    /// The most CPU-frugal peer.
    pub frugal_peer: Option<String>,
    /// Peers that finished no run (killed, failed, timed out).
    pub peers_without_result: Vec<String>,
}

fn best<'a>(
    peers: &[&'a Median],
    value: impl Fn(&Median) -> Option<f64>,
    higher: bool,
) -> Option<(&'a Median, f64)> {
    peers
        .iter()
        .filter_map(|m| value(m).map(|v| (*m, v)))
        .fold(None, |acc, (m, v)| match acc {
            Some((_, b)) if (higher && b >= v) || (!higher && b <= v) => acc,
            _ => Some((m, v)),
        })
}

/// sluice's ratios to the best peer: per case, mode and box, plus sluice at its equal (and
/// default) gzip level against the peers at their usual level 6.
pub fn ratios(medians: &[Median], settings: &Settings) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut comparisons: Vec<(String, Case, String, String)> = Vec::new();
    for m in medians {
        if m.config.tool == Tool::Sluice && m.config.case != Case::Limit {
            let c = (
                format!("{} {}", m.config.case.id(), m.config.mode),
                m.config.case,
                m.config.mode.clone(),
                m.config.mode.clone(),
            );
            if !comparisons.contains(&c) {
                comparisons.push(c);
            }
        }
    }
    let gzip = format!("gzip-{}", settings.gzip_level);
    let usual = format!("gzip-{USUAL_GZIP_LEVEL}");
    if gzip != usual {
        comparisons.push((
            format!("ingest sluice {gzip} vs peers {usual}"),
            Case::Ingest,
            gzip,
            usual,
        ));
    }
    for (name, case, sluice_mode, peer_mode) in comparisons {
        for kind in BoxKind::ALL {
            let Some(sluice) = medians.iter().find(|m| {
                m.config.case == case
                    && m.config.tool == Tool::Sluice
                    && m.config.mode == sluice_mode
                    && m.box_kind == kind
            }) else {
                continue;
            };
            let peers: Vec<&Median> = medians
                .iter()
                .filter(|m| {
                    m.config.case == case
                        && m.config.tool.is_peer()
                        && m.config.mode == peer_mode
                        && m.box_kind == kind
                })
                .collect();
            if peers.is_empty() {
                continue;
            }
            let ok_peers: Vec<&Median> = peers.iter().copied().filter(|m| m.ok > 0).collect();
            let fast = best(&ok_peers, |m| m.mib_per_s, true);
            let lean = best(&ok_peers, |m| m.peak_bytes.map(|b| b as f64), false);
            let frugal = best(&ok_peers, |m| m.cpu_s_per_gib, false);
            let div = |a: Option<f64>, b: Option<(&Median, f64)>| match (a, b) {
                (Some(a), Some((_, b))) if b > 0.0 => Some(a / b),
                _ => None,
            };
            out.push(Ratio {
                comparison: name.clone(),
                box_kind: kind,
                throughput: div(sluice.mib_per_s, fast),
                fastest_peer: fast.map(|(m, _)| m.config.tool.id().to_owned()),
                peak: div(sluice.peak_bytes.map(|b| b as f64), lean),
                leanest_peer: lean.map(|(m, _)| m.config.tool.id().to_owned()),
                cpu: div(sluice.cpu_s_per_gib, frugal),
                frugal_peer: frugal.map(|(m, _)| m.config.tool.id().to_owned()),
                peers_without_result: peers
                    .iter()
                    .filter(|m| m.ok == 0)
                    .map(|m| format!("{} ({})", m.config.tool.id(), m.outcome))
                    .collect(),
            });
        }
    }
    out
}

/// The whole report as JSON.
pub fn to_json(
    date: &str,
    machine: &Machine,
    settings: &Settings,
    runs: &[RunRecord],
    medians: &[Median],
    ratios: &[Ratio],
    wall_secs: f64,
) -> Value {
    json!({
        "date": date,
        "command": settings.command,
        "machine": machine,
        "versions": std::env::var("BENCH_VERSIONS").unwrap_or_default(),
        "load_at_end": load(),
        "wall_secs": wall_secs,
        "settings": settings,
        "medians": medians,
        "ratios": ratios,
        "runs": runs,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio_cell(v: Option<f64>, peer: &Option<String>) -> String {
    match (v, peer) {
        (Some(v), Some(p)) => format!("{v:.2}× ({p})"),
        _ => "–".to_owned(),
    }
}

/// The headline's description of the boxes that ran: each Lambda box's cgroup settings, and
/// the memory sluice is told it has.
fn boxes_line(boxes: &[BoxKind]) -> String {
    let mut parts = Vec::new();
    for &kind in boxes {
        parts.push(match kind.lambda_memory_mib() {
            None => "*unconstrained* (all cores; memory only measured, capped at 3/4 of the \
                     machine's)"
                .to_owned(),
            Some(mib) => format!(
                "*Lambda {} MB* = cgroup v1 `memory.limit_in_bytes={mib}M` + \
                 `cpu.cfs_quota_us={}`/`{CFS_PERIOD_US}`",
                thousands(mib),
                kind.cpu_quota_us(1)
            ),
        });
    }
    let mut line = format!("Boxes: {}.", parts.join("; "));
    if boxes.iter().any(|b| b.lambda_memory_mib().is_some()) {
        line.push_str(
            " A Lambda box has a function's memory and the CPU Lambda gives that much memory \
             (one vCPU per 1,769 MB)",
        );
        line.push_str(if boxes.contains(&BoxKind::Lambda256) {
            "; the 256 MB box keeps the 14,500 µs its earlier tables used (256/1769 of a vCPU \
             is 14,471 µs)."
        } else {
            "."
        });
    }
    let memory: Vec<String> = boxes
        .iter()
        .map(|b| format!("{} in {}", b.function_memory_mib(), b.name()))
        .collect();
    line.push_str(&format!(
        " sluice's bootstraps run with `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` set to the box's memory \
         ({}), and the sink and the compressor alone plan with the same memory.",
        memory.join(", ")
    ));
    line
}

/// What to say under a box's table: the 3,538 MB box's two vCPUs are a quota on this
/// machine's cores, which Garage and nginx use too.
fn box_note(kind: BoxKind, machine: &Machine) -> Option<String> {
    if kind != BoxKind::Lambda3538 {
        return None;
    }
    let vcpus = kind.cpu_quota_us(1) / CFS_PERIOD_US;
    Some(if machine.cores as u64 <= vcpus {
        format!(
            "The box's {vcpus} vCPUs are a CPU quota, and this machine has {} cores: all of \
             them, shared with Garage (the S3 server) and nginx (the source), which run outside \
             the box; a {} MB function has its vCPUs to itself. The box differs from the \
             unconstrained one mostly in its memory limit.",
            machine.cores,
            thousands(kind.function_memory_mib())
        )
    } else {
        format!(
            "The box's {vcpus} vCPUs are a CPU quota on this machine's {} cores, which Garage \
             (the S3 server) and nginx (the source) share, outside the box.",
            machine.cores
        )
    })
}

/// The Markdown report: settings line, limits, one table per box, ratios.
pub fn to_markdown(
    date: &str,
    machine: &Machine,
    settings: &Settings,
    medians: &[Median],
    ratios: &[Ratio],
    chart: Option<&str>,
) -> String {
    let mut md = String::new();
    let gib = settings.size as f64 / (1u64 << 30) as f64;
    let _ = writeln!(
        md,
        "Benchmark of {date} on {} (load at start {}); `{}`: a {gib:.2} GiB source \
         (`BENCH_GIB`: the JSON document; for transform, the uncompressed CSV; for export, the \
         table's CSV), median of {} run(s) per tool and box, every output read back and \
         checked. {} Peak memory and CPU time count every process of a tool (the whole \
         pipeline); the source (nginx) and S3 (Garage) run outside the boxes.",
        machine.line(),
        machine.load_at_start,
        settings.command,
        settings.runs,
        boxes_line(&settings.boxes)
    );
    if let Ok(versions) = std::env::var("BENCH_VERSIONS") {
        let _ = writeln!(md, "\nVersions: {versions}.");
    }
    if let Some(chart) = chart {
        let _ = writeln!(md, "\n![throughput and peak memory]({chart})");
    }
    // Rows/s only when a case counts rows (records, transform, export).
    let with_rows = medians.iter().any(|m| m.rows_per_s.is_some());
    let (rows_head, rows_rule) = if with_rows {
        (" k rows/s |", "---:|")
    } else {
        ("", "")
    };
    for kind in BoxKind::ALL {
        if !medians.iter().any(|m| m.box_kind == kind) {
            continue;
        }
        let _ = writeln!(
            md,
            "\n**{}**\n\n| case | mode | tool | MiB/s |{rows_head} peak MiB | CPU s/GiB | output \
             MiB | runs |\n|---|---|---|---:|{rows_rule}---:|---:|---:|---|",
            kind.title()
        );
        for m in medians.iter().filter(|m| m.box_kind == kind) {
            // A `|` inside a cell would end it.
            let label = m.config.label_in(kind).replace('|', "\\|");
            let tool = if matches!(m.config.tool, Tool::Sluice | Tool::SluiceUnsigned) {
                format!("**{label}**")
            } else {
                label
            };
            let rows = if with_rows {
                format!(" {} |", opt(m.rows_per_s.map(|r| r / 1000.0), 1))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |{rows} {} | {} | {} | {} |",
                m.config.case.id(),
                m.config.mode,
                tool,
                opt(m.mib_per_s, 1),
                opt(m.peak_bytes.map(|b| b as f64 / MIB), 0),
                opt(m.cpu_s_per_gib, 2),
                opt(m.out_bytes.map(|b| b as f64 / MIB), 1),
                m.outcome
            );
        }
        if let Some(note) = box_note(kind, machine) {
            let _ = writeln!(md, "\n{note}");
        }
    }
    let parquet: Vec<&Median> = medians
        .iter()
        .filter(|m| m.config.case.is_parquet())
        .collect();
    if !parquet.is_empty() {
        let _ = writeln!(
            md,
            "\n**Parquet outputs** (read back with pyarrow; median size of the verified runs)\n\n\
             | case | tool | box | bytes | rows | row groups | files | codec |\n\
             |---|---|---|---:|---:|---:|---:|---|"
        );
        for m in parquet {
            let (rows, groups, files, codecs) = match &m.parquet {
                Some(p) => (
                    p.rows.to_string(),
                    p.row_groups.to_string(),
                    p.files.to_string(),
                    p.codecs.join(", "),
                ),
                None => ("–".into(), "–".into(), "–".into(), m.outcome.clone()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {rows} | {groups} | {files} | {codecs} |",
                m.config.case.id(),
                m.config.tool.id(),
                m.box_kind.name(),
                m.out_bytes
                    .map_or_else(|| "–".to_owned(), |b| b.to_string()),
            );
        }
    }
    if let Some(reason) = settings.dlt_reason() {
        let cases: Vec<&str> = [Case::Records, Case::RecordsParquet]
            .into_iter()
            .filter(|&case| medians.iter().any(|m| m.config.case == case))
            .map(Case::id)
            .collect();
        if !cases.is_empty() {
            let _ = writeln!(md, "\ndlt ({}) was not run: {reason}.", cases.join(", "));
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            md,
            "\n**sluice ÷ best peer** (throughput: higher is better; peak memory and CPU: lower \
             is better)\n\n| comparison | box | throughput | peak memory | CPU s/GiB | peers \
             without a result |\n|---|---|---|---|---|---|"
        );
        for r in ratios {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.comparison,
                r.box_kind.name(),
                ratio_cell(r.throughput, &r.fastest_peer),
                ratio_cell(r.peak, &r.leanest_peer),
                ratio_cell(r.cpu, &r.frugal_peer),
                if r.peers_without_result.is_empty() {
                    "–".to_owned()
                } else {
                    r.peers_without_result.join(", ")
                }
            );
        }
    }
    let _ = writeln!(
        md,
        "\nModes: `none` = byte copy; `gzip-{g}` = every tool at the same gzip level \
         (sluice's default); `gzip-{u}` = the peers at gzip's usual level; `zstd-3` = every \
         tool at zstd's default. Records: `$.data[*]` to NDJSON, gzip-{g}. Transform: the seed \
         pipeline (`events/transform-s3.pipeline.json`: schema check and quarantine, filter \
         NJ + FORD + P, replace, concat, select, rename) on a gzip parking-violations CSV in \
         S3 of the same uncompressed size, to a gzip-{g} CSV; MiB/s of uncompressed CSV. \
         Records-parquet and transform-parquet: the same, to Parquet with {p} pages at each \
         writer's default level (records with the declared schema id int, name, kind, ref \
         string, value float, ts timestamp, tags string (its JSON text), active bool); every \
         output's rows counted from its footers by pyarrow. \
         Export: `{q}` on a table in a local Postgres (outside the boxes, like S3 and the \
         source; id bigint, name, kind text, value double, ts timestamptz, active bool, note \
         text) to a gzip-{g} CSV with a header, read as a role that may only read; MiB/s of the \
         table's CSV as `COPY` renders it; every output's header and lines counted. \
         Limits: the compressor alone compresses {s} MiB of the document in memory on the \
         threads the box's memory buys (one per 1,769 MB, at least one; its label says how \
         many); the sink alone uploads with the part schedule of the box's memory.",
        g = settings.gzip_level,
        u = USUAL_GZIP_LEVEL,
        p = PARQUET_MODE,
        q = super::pgtable::QUERY,
        s = settings.compress_sample / (1 << 20)
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cores: usize) -> Machine {
        Machine {
            cpu: "test".into(),
            cores,
            kernel: "6.1".into(),
            memory_mib: 24 * 1024,
            load_at_start: "0.00 0.00 0.00".into(),
        }
    }

    #[test]
    fn the_headline_gives_every_boxs_limits_and_sluices_memory() {
        let line = boxes_line(&BoxKind::ALL);
        for part in [
            "*unconstrained*",
            "*Lambda 128 MB* = cgroup v1 `memory.limit_in_bytes=128M` + \
             `cpu.cfs_quota_us=7236`/`100000`",
            "*Lambda 256 MB* = cgroup v1 `memory.limit_in_bytes=256M` + \
             `cpu.cfs_quota_us=14500`/`100000`",
            "*Lambda 3,538 MB* = cgroup v1 `memory.limit_in_bytes=3538M` + \
             `cpu.cfs_quota_us=200000`/`100000`",
            "(256 in unconstrained, 128 in lambda-128mb, 256 in lambda-256mb, 3538 in \
             lambda-3538mb)",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        let line = boxes_line(&[BoxKind::Lambda128]);
        assert!(
            !line.contains("unconstrained") && !line.contains("14,500"),
            "{line}"
        );
    }

    #[test]
    fn the_3538_mb_table_says_its_vcpus_share_the_machines_cores() {
        let note = box_note(BoxKind::Lambda3538, &machine(2)).unwrap();
        assert!(note.contains("this machine has 2 cores"), "{note}");
        assert!(note.contains("Garage") && note.contains("nginx"), "{note}");
        let note = box_note(BoxKind::Lambda3538, &machine(16)).unwrap();
        assert!(note.contains("16 cores"), "{note}");
        for kind in [
            BoxKind::Unconstrained,
            BoxKind::Lambda128,
            BoxKind::Lambda256,
        ] {
            assert_eq!(box_note(kind, &machine(2)), None);
        }
    }
}
