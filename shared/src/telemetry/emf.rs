//! CloudWatch Embedded Metric Format: a structured log line that CloudWatch Logs turns into
//! metrics. [`Emf`] builds one line (namespace, dimension sets, metrics with units, dimension
//! values and properties); [`invocation_line`] is the line every function prints at the end of
//! each invocation.
//!
//! The format: a JSON object whose `_aws` member declares the metrics
//! (`{"Timestamp": ms, "CloudWatchMetrics": [{"Namespace", "Dimensions", "Metrics"}]}`) and
//! whose top-level members hold the values of every metric and dimension named there; other
//! members are properties, searchable in Logs Insights but not metrics.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::progress::ProgressSnapshot;

/// The environment variable naming the CloudWatch namespace of every sluice metric.
pub const NAMESPACE_VAR: &str = "SLUICE_METRICS_NAMESPACE";
/// The namespace when [`NAMESPACE_VAR`] is unset or empty.
pub const DEFAULT_NAMESPACE: &str = "sluice";

/// The namespace from [`NAMESPACE_VAR`], else [`DEFAULT_NAMESPACE`].
pub fn namespace() -> String {
    std::env::var(NAMESPACE_VAR)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// A CloudWatch unit (the subset sluice uses). Units are labels: CloudWatch does not convert
/// between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `Count`.
    Count,
    /// `Bytes`.
    Bytes,
    /// `Megabytes` (sluice's values are MiB).
    Megabytes,
    /// `Milliseconds`.
    Milliseconds,
    /// `Seconds`.
    Seconds,
    /// `Megabytes/Second` (sluice's values are MiB/s).
    MegabytesPerSecond,
    /// `None`.
    None,
}

impl Unit {
    /// The name CloudWatch expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::Megabytes => "Megabytes",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::MegabytesPerSecond => "Megabytes/Second",
            Unit::None => "None",
        }
    }
}

/// One EMF line under construction. Every dimension named in a dimension set must be given a
/// value with [`dimension`](Self::dimension) (CloudWatch drops metrics whose dimension is
/// missing); [`to_line`](Self::to_line) serialises it.
#[derive(Debug, Clone)]
pub struct Emf {
    namespace: String,
    timestamp_ms: u64,
    dimension_sets: Vec<Vec<String>>,
    metrics: Vec<Value>,
    members: Map<String, Value>,
}

impl Emf {
    /// An empty line in `namespace`, stamped `timestamp`.
    pub fn new(namespace: impl Into<String>, timestamp: SystemTime) -> Self {
        Emf {
            namespace: namespace.into(),
            timestamp_ms: timestamp
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            dimension_sets: Vec::new(),
            metrics: Vec::new(),
            members: Map::new(),
        }
    }

    /// Adds a dimension set: every metric of the line is published once per set.
    pub fn dimension_set(mut self, names: &[&str]) -> Self {
        self.dimension_sets
            .push(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// The value of dimension `name`.
    pub fn dimension(mut self, name: &str, value: impl Into<String>) -> Self {
        self.members
            .insert(name.to_owned(), Value::String(value.into()));
        self
    }

    /// A metric `name` of `unit` with `value` (a number).
    pub fn metric(mut self, name: &str, unit: Unit, value: impl Into<Value>) -> Self {
        self.metrics
            .push(json!({"Name": name, "Unit": unit.as_str()}));
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// A property: a member that is logged and searchable, but not a metric.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// The line as JSON (one line, no newline).
    pub fn to_line(&self) -> String {
        let mut doc = self.members.clone();
        doc.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": self.timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": self.dimension_sets,
                    "Metrics": self.metrics,
                }]
            }),
        );
        Value::Object(doc).to_string()
    }
}

/// What an invocation reports besides its counters.
#[derive(Debug, Clone, Copy)]
pub struct InvocationFacts<'a> {
    /// The function (`ingest-http`, ...): dimension `Function`.
    pub function: &'a str,
    /// The job name: dimension `Job`.
    pub job: &'a str,
    /// The Lambda request id: property `RequestId`.
    pub request_id: &'a str,
    /// The Lambda error type of a failed invocation: property `ErrorType`, and `Errors` 1.
    pub error_type: Option<&'a str>,
    /// Peak resident memory of the process ([`peak_rss_bytes`](super::peak_rss_bytes)).
    pub peak_rss_bytes: Option<u64>,
}

/// The EMF line of one invocation: `BytesIn`, `BytesOut` (Bytes), `RecordsIn`, `RecordsOut`,
/// `RecordsQuarantined`, `Objects`, `Parts`, `Retries`, `Errors` (Count), `DurationMs`
/// (Milliseconds), `ThroughputMiBps` (bytes in per second, Megabytes/Second), `PeakMemoryMiB`
/// (Megabytes), with dimension sets `[Function]` and `[Function, Job]`.
pub fn invocation_line(
    namespace: &str,
    facts: &InvocationFacts<'_>,
    s: &ProgressSnapshot,
    timestamp: SystemTime,
) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let mut line = Emf::new(namespace, timestamp)
        .dimension_set(&["Function"])
        .dimension_set(&["Function", "Job"])
        .dimension("Function", facts.function)
        .dimension("Job", facts.job)
        .metric("BytesIn", Unit::Bytes, s.bytes_in)
        .metric("BytesOut", Unit::Bytes, s.bytes_out)
        .metric("RecordsIn", Unit::Count, s.records_in)
        .metric("RecordsOut", Unit::Count, s.records_out)
        .metric("RecordsQuarantined", Unit::Count, s.quarantined)
        .metric("Objects", Unit::Count, s.objects)
        .metric("Parts", Unit::Count, s.parts_done)
        .metric(
            "DurationMs",
            Unit::Milliseconds,
            s.elapsed.as_millis() as u64,
        )
        .metric(
            "ThroughputMiBps",
            Unit::MegabytesPerSecond,
            round1(s.mib_per_s()),
        )
        .metric(
            "PeakMemoryMiB",
            Unit::Megabytes,
            round1(facts.peak_rss_bytes.unwrap_or(0) as f64 / MIB),
        )
        .metric("Retries", Unit::Count, s.retries)
        .metric("Errors", Unit::Count, u64::from(facts.error_type.is_some()))
        .property("RequestId", facts.request_id);
    if let Some(error_type) = facts.error_type {
        line = line.property("ErrorType", error_type);
    }
    line.to_line()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot() -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_in: 3 << 20,
            bytes_out: 1000,
            records_in: 10,
            records_out: 7,
            quarantined: 3,
            parts_done: 2,
            parts_in_flight: 0,
            objects: 1,
            retries: 4,
            total_bytes: None,
            elapsed: Duration::from_millis(1500),
        }
    }

    #[test]
    fn the_builder_declares_every_metric_and_dimension() {
        let line = Emf::new("ns", SystemTime::UNIX_EPOCH + Duration::from_millis(1234))
            .dimension_set(&["A"])
            .dimension("A", "x")
            .metric("M", Unit::Bytes, 5)
            .property("P", true)
            .to_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1234);
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "ns");
        assert_eq!(cw["Dimensions"], json!([["A"]]));
        assert_eq!(cw["Metrics"], json!([{"Name": "M", "Unit": "Bytes"}]));
        assert_eq!(
            (&v["A"], &v["M"], &v["P"]),
            (&json!("x"), &json!(5), &json!(true))
        );
    }

    #[test]
    fn an_invocation_line_carries_the_counters() {
        let facts = InvocationFacts {
            function: "ingest-http",
            job: "lake/raw/",
            request_id: "r-1",
            error_type: None,
            peak_rss_bytes: Some(50 << 20),
        };
        let v: Value = serde_json::from_str(&invocation_line(
            "sluice",
            &facts,
            &snapshot(),
            SystemTime::now(),
        ))
        .unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Dimensions"], json!([["Function"], ["Function", "Job"]]));
        let names: Vec<&str> = cw["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(
                v.get(*name).is_some_and(Value::is_number),
                "{name} has no value"
            );
        }
        assert_eq!(names.len(), 12);
        assert_eq!(v["Function"], "ingest-http");
        assert_eq!(v["Job"], "lake/raw/");
        assert_eq!(v["BytesIn"], 3 << 20);
        assert_eq!(v["RecordsQuarantined"], 3);
        assert_eq!(v["Parts"], 2);
        assert_eq!(v["DurationMs"], 1500);
        assert_eq!(v["ThroughputMiBps"], 2.0);
        assert_eq!(v["PeakMemoryMiB"], 50.0);
        assert_eq!(v["Retries"], 4);
        assert_eq!(v["Errors"], 0);
        assert!(v.get("ErrorType").is_none());
        let unit = |n: &str| {
            cw["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["Name"] == n)
                .unwrap()["Unit"]
                .clone()
        };
        assert_eq!(unit("BytesOut"), "Bytes");
        assert_eq!(unit("ThroughputMiBps"), "Megabytes/Second");
        assert_eq!(unit("DurationMs"), "Milliseconds");

        let failed = InvocationFacts {
            error_type: Some("Upstream"),
            ..facts
        };
        let v: Value = serde_json::from_str(&invocation_line(
            "ns",
            &failed,
            &snapshot(),
            SystemTime::now(),
        ))
        .unwrap();
        assert_eq!(v["Errors"], 1);
        assert_eq!(v["ErrorType"], "Upstream");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ns");
    }
}
