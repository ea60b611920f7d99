//! The router against objects kept in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};

use super::*;
use crate::checksum::ChecksumAlgorithm;
use crate::key::KeyVars;

/// Objects in memory: completed ones by key, with their records; fails the `fail_at`th finish.
#[derive(Default, Clone)]
struct Memory {
    done: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>,
    open_now: Arc<Mutex<usize>>,
    most_open: Arc<Mutex<usize>>,
    aborted: Arc<Mutex<usize>>,
    finishes: Arc<Mutex<usize>>,
    fail_at: Option<usize>,
}

struct MemObject {
    key: String,
    records: Vec<Vec<u8>>,
    bytes: u64,
    memory: Memory,
}

impl Objects for Memory {
    type Object = MemObject;
    fn open(&mut self, key: &str) -> Result<MemObject> {
        let mut open = self.open_now.lock().unwrap();
        *open += 1;
        let mut most = self.most_open.lock().unwrap();
        *most = (*most).max(*open);
        Ok(MemObject {
            key: key.to_owned(),
            records: Vec::new(),
            bytes: 0,
            memory: self.clone(),
        })
    }
    async fn write(&mut self, object: &mut MemObject, record: &[u8]) -> Result<()> {
        object.bytes += record.len() as u64 + 1;
        object.records.push(record.to_vec());
        Ok(())
    }
    fn size_bound(object: &MemObject) -> u64 {
        object.bytes
    }
    async fn finish(object: MemObject) -> Result<Uploaded> {
        let m = object.memory;
        *m.open_now.lock().unwrap() -= 1;
        let n = {
            let mut f = m.finishes.lock().unwrap();
            *f += 1;
            *f
        };
        if m.fail_at == Some(n) {
            return Err(Error::Internal {
                message: "injected finish failure".into(),
            });
        }
        let previous = m
            .done
            .lock()
            .unwrap()
            .insert(object.key.clone(), object.records);
        assert!(previous.is_none(), "{} written twice", object.key);
        Ok(Uploaded {
            outcome: PutOutcome::Written {
                e_tag: "e".into(),
                checksum: None,
            },
            bytes: object.bytes,
            parts: 1,
            checksum: ChecksumAlgorithm::Crc64nvme.empty(),
        })
    }
    async fn abort(object: MemObject) {
        *object.memory.open_now.lock().unwrap() -= 1;
        *object.memory.aborted.lock().unwrap() += 1;
    }
}

fn limits(max_open: usize) -> Limits {
    Limits {
        max_open,
        max_partitions: 10_000,
        max_object_bytes: None,
        max_object_records: None,
        spill_dir: std::env::temp_dir(),
        spill_bytes: 1 << 40,
        spill_buffer: 1 << 20,
    }
}

fn template(t: &str) -> KeyTemplate {
    let vars = KeyVars::new(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(), "run");
    KeyTemplate::compile("destination.key", t, &vars).unwrap()
}

/// Writes `(day, seq)` records; returns, per day, the objects and the records in each.
async fn run(
    memory: &Memory,
    limits: Limits,
    records: impl IntoIterator<Item = (u32, u64)>,
) -> Result<(BTreeMap<u32, Vec<Vec<u64>>>, PartitionedSummary)> {
    let t = template("t/dt={field:day}/{part}.json");
    let written = Written::default();
    let mut p = Partitioner::new(memory.clone(), t, limits, written.clone())?;
    let mut fed: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (day, seq) in records {
        let record = format!("{{\"day\":{day},\"seq\":{seq}}}");
        fed.entry(day).or_default().push(seq);
        let segment = p
            .template()
            .segment(0, &FieldValue::Text(day.to_string()))
            .unwrap();
        p.write(vec![segment], record.as_bytes()).await?;
    }
    let (objects, summary) = p.finish().await?;
    assert_eq!(objects.len(), memory.done.lock().unwrap().len());
    let mut per_day: BTreeMap<u32, Vec<Vec<u64>>> = BTreeMap::new();
    for (key, records) in memory.done.lock().unwrap().iter() {
        let seqs: Vec<u64> = records
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(r).unwrap();
                let day = v["day"].as_u64().unwrap() as u32;
                assert!(
                    key.starts_with(&format!("t/dt={day}/")),
                    "{key} holds day {day}"
                );
                v["seq"].as_u64().unwrap()
            })
            .collect();
        let day: u32 = key[5..key[5..].find('/').unwrap() + 5].parse().unwrap();
        per_day.entry(day).or_default().push(seqs);
    }
    // Every record in exactly one object of its day, in arrival order within each.
    for (day, seqs) in &fed {
        let mut got: Vec<u64> = per_day[day].iter().flatten().copied().collect();
        got.sort_unstable();
        let mut want = seqs.clone();
        want.sort_unstable();
        assert_eq!(got, want, "day {day}");
    }
    Ok((per_day, summary))
}

#[tokio::test]
async fn sorted_input_with_late_records_gives_at_most_two_objects_per_day() {
    let memory = Memory::default();
    let mut rng = fastrand::Rng::with_seed(7);
    let records = (0..200_000u64).map(|i| {
        let day = (i / 5_000) as u32;
        // One record in twenty is up to three days late.
        let late = if rng.u8(..20) == 0 { rng.u32(0..=3) } else { 0 };
        (day.saturating_sub(late), i)
    });
    let (per_day, summary) = run(&memory, limits(4), records).await.unwrap();
    assert_eq!(per_day.len(), 40);
    assert!(
        per_day.values().all(|o| o.len() <= 2),
        "{:?}",
        per_day.values().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(*memory.most_open.lock().unwrap() <= 4);
    assert!(
        summary.spilled_records > 0 && summary.spill_flushes == 0,
        "{summary:?}"
    );
}

#[tokio::test]
async fn interleaved_input_gives_one_object_per_day() {
    let memory = Memory::default();
    let mut rng = fastrand::Rng::with_seed(11);
    let records = (0..300_000u64).map(|i| (rng.u32(0..365), i));
    let (per_day, summary) = run(&memory, limits(8), records).await.unwrap();
    assert_eq!(per_day.len(), 365);
    assert!(per_day.values().all(|o| o.len() == 1));
    assert!(*memory.most_open.lock().unwrap() <= 8);
    assert_eq!(summary.objects, 365);
}

#[tokio::test]
async fn objects_roll_at_the_record_and_size_limits() {
    let memory = Memory::default();
    let mut l = limits(2);
    l.max_object_records = Some(1_000);
    let (per_day, summary) = run(&memory, l, (0..10_500u64).map(|i| ((i % 2) as u32, i)))
        .await
        .unwrap();
    assert!(per_day.values().flatten().all(|o| o.len() <= 1_000));
    assert_eq!(per_day[&0].len(), 6);
    assert!(summary.rolled >= 10, "{summary:?}");

    let memory = Memory::default();
    let mut l = limits(1);
    l.max_object_bytes = Some(10_000);
    run(&memory, l, (0..5_000u64).map(|i| (0, i)))
        .await
        .unwrap();
    for (key, records) in memory.done.lock().unwrap().iter() {
        let bytes: usize = records.iter().map(|r| r.len() + 1).sum();
        assert!(bytes <= 10_000, "{key}: {bytes}");
    }
}

#[tokio::test]
async fn a_full_spill_finishes_objects_early_but_loses_nothing() {
    let memory = Memory::default();
    let mut l = limits(3);
    l.spill_bytes = 64 * 1024;
    l.spill_buffer = 0;
    let mut rng = fastrand::Rng::with_seed(3);
    let records = (0..100_000u64).map(|i| (rng.u32(0..50), i));
    let (per_day, summary) = run(&memory, l, records).await.unwrap();
    assert!(summary.spill_flushes > 0, "{summary:?}");
    assert!(*memory.most_open.lock().unwrap() <= 3);
    // Each flush writes one partition's share of the budget: far fewer objects than records.
    let objects: usize = per_day.values().map(Vec::len).sum();
    assert!(
        objects < 1_000,
        "{objects} objects for 100,000 records: {summary:?}"
    );
}

#[tokio::test]
async fn a_failed_finish_aborts_the_open_objects_and_lists_the_completed() {
    let memory = Memory {
        fail_at: Some(3),
        ..Memory::default()
    };
    let t = template("t/dt={field:day}/{part}.json");
    let written = Written::default();
    let mut p = Partitioner::new(memory.clone(), t, limits(8), written.clone()).unwrap();
    for i in 0..800u32 {
        let segment = p
            .template()
            .segment(0, &FieldValue::Text((i % 8).to_string()))
            .unwrap();
        p.write(vec![segment], b"{}").await.unwrap();
    }
    let err = p.finish().await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(
        written.lock().unwrap().len(),
        2,
        "the completed objects, to delete"
    );
    assert_eq!(*memory.open_now.lock().unwrap(), 0, "nothing left open");
    assert_eq!(*memory.aborted.lock().unwrap(), 5);
}

#[test]
fn a_key_that_can_give_two_objects_needs_part() {
    let e = Partitioner::new(
        Memory::default(),
        template("t/dt={field:day}/data.json"),
        limits(2),
        Written::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("{part}"), "{e}");
    let mut l = limits(2);
    l.max_object_records = Some(5);
    assert!(
        Partitioner::new(
            Memory::default(),
            template("t/data.json"),
            l,
            Written::default()
        )
        .is_err()
    );
    assert!(
        Partitioner::new(
            Memory::default(),
            template("t/data.json"),
            limits(1),
            Written::default()
        )
        .is_ok()
    );
}

#[test]
fn json_fields_pick_top_level_keys() {
    let v = json_fields(
        br#"{"a":"x","n":{"deep":1},"b":2.5,"c":null}"#,
        &["b", "a", "zz", "c", "n"],
    )
    .unwrap();
    assert_eq!(
        v,
        vec![
            FieldValue::Text("2.5".into()),
            FieldValue::Text("x".into()),
            FieldValue::Null,
            FieldValue::Null,
            FieldValue::Text(r#"{"deep":1}"#.into()),
        ]
    );
    assert!(json_fields(b"[1,2]", &["a"]).is_err());
    assert!(json_fields(br#"{"a": "#, &["a"]).is_err());
}

#[tokio::test]
async fn a_partition_past_max_partitions_fails_the_run_and_names_it() {
    let memory = Memory::default();
    let mut lim = limits(2);
    lim.max_partitions = 3;
    let records = (0..10u64).map(|i| (i as u32, i));
    let e = run(&memory, lim, records).await.unwrap_err().to_string();
    assert!(
        e.contains("record 4 opens partition 4 day=3, more than tuning.max_partitions 3"),
        "{e}"
    );
    assert!(e.contains("t/dt={field:day}/{part}.json"), "{e}");
}

/// A run suspended (spilled records included) and resumed by another router, as the next
/// invocation does, writes each partition's next `{part}`, lists every object once, and a
/// resumed run that fails rolls back the earlier invocation's objects too.
#[tokio::test]
async fn a_suspended_run_resumes_at_each_partitions_next_part() {
    let memory = Memory::default();
    let t = || template("t/dt={field:day}/{part}.json");
    let record = |day: u32, seq: u64| (vec![format!("d{day}")], format!("{seq}").into_bytes());
    // One open object for three days: two of them spill.
    let written = Written::default();
    let mut first = Partitioner::new(memory.clone(), t(), limits(1), written.clone()).unwrap();
    for seq in 0..30 {
        let (segments, r) = record((seq % 3) as u32, seq);
        first.write(segments, &r).await.unwrap();
    }
    let state = first.suspend().await.unwrap();
    assert_eq!(state.objects.len(), 3, "{state:?}");
    assert_eq!(*memory.open_now.lock().unwrap(), 0);
    assert!(
        state.partitions.iter().all(|(_, next)| *next == 2),
        "{state:?}"
    );
    // Through JSON, as the checkpoint keeps it.
    let state: PartitionsResume =
        serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();

    let written = Written::default();
    let mut second = Partitioner::new(memory.clone(), t(), limits(4), written.clone()).unwrap();
    second.resume(state);
    for seq in 30..40 {
        let (segments, r) = record((seq % 4) as u32, seq);
        second.write(segments, &r).await.unwrap();
    }
    let (objects, summary) = second.finish().await.unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "t/dt=d0/00001.json",
            "t/dt=d1/00001.json",
            "t/dt=d2/00001.json",
            "t/dt=d0/00002.json",
            "t/dt=d1/00002.json",
            "t/dt=d2/00002.json",
            "t/dt=d3/00001.json"
        ]
    );
    assert_eq!(summary.objects, 7);
    assert_eq!(summary.partitions, 4);
    assert!(summary.spilled_records > 0, "{summary:?}");
    let total: usize = memory.done.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(total, 40);

    // A failure after resuming: the caller's roll-back list holds both invocations' objects.
    let failing = Memory {
        fail_at: Some(1),
        ..Memory::default()
    };
    let written = Written::default();
    let mut third = Partitioner::new(failing, t(), limits(4), written.clone()).unwrap();
    third.resume(PartitionsResume {
        partitions: vec![(vec!["d0".into()], 3)],
        objects: objects.clone(),
        summary,
    });
    let (segments, r) = record(0, 99);
    third.write(segments, &r).await.unwrap();
    assert!(third.finish().await.is_err());
    assert_eq!(
        written.lock().unwrap().len(),
        7,
        "the earlier objects are kept for roll-back"
    );
}
