//! Reading what a function printed: its CloudWatch EMF lines (stdout) and its `progress` log
//! lines (stderr, JSON), from a [`LambdaProcess`] transcript.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::LambdaProcess;

/// Every JSON line of `transcript` that is an EMF document (has `_aws.CloudWatchMetrics`)
/// with a `Function` member: the one line per invocation every function prints.
pub fn invocation_lines(transcript: &str) -> Vec<Value> {
    json_lines(transcript)
        .filter(|v| v["_aws"]["CloudWatchMetrics"].is_array() && v.get("Function").is_some())
        .collect()
}

/// Every JSON log line of `transcript` whose message is `progress`.
pub fn progress_lines(transcript: &str) -> Vec<Value> {
    json_lines(transcript)
        .filter(|v| v["message"] == "progress")
        .collect()
}

fn json_lines(transcript: &str) -> impl Iterator<Item = Value> + '_ {
    transcript
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
}

/// Waits (up to 10 s) until `process` has printed at least `n` invocation lines, and returns
/// the `n`th (1-based): the output readers write the transcript a moment after the function
/// answered. Panics with the transcript's tail when it does not come.
pub async fn nth_invocation_line(process: &LambdaProcess, n: usize) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = invocation_lines(&process.transcript());
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(
            Instant::now() < until,
            "{} EMF invocation lines, waited for {n}; output:\n{}",
            lines.len(),
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of metric `name` in an EMF line, after checking that the line declares it.
pub fn metric(line: &Value, name: &str) -> u64 {
    let declared = line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["Name"] == name));
    assert!(declared, "{name} is not declared in {line}");
    line[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not a whole number in {line}"))
}
