//! Test-only fault injection: named points where a test can make a producer panic, to prove
//! that a panic aborts the upload and fails the invocation instead of completing a truncated
//! object.
//!
//! Compiled only with the `fault-injection` feature (which `make test` builds with and
//! `make build` does not); without it [`point`] is an empty inline function. With it,
//! `SLUICE_FAULT=<site>:<n>[,<site>:<n>...]` panics at the `n`-th time `site` is reached.
//!
//! Sites: `ingest.page` (a page starts), `transform.row` (a row is read, one worker),
//! `transform.worker` (a worker thread takes a chunk), `transform.quarantine` (a row is
//! quarantined), `export.chunk` (a chunk of COPY data arrives), `parquet.batch` (a batch of rows
//! is encoded into a Parquet row group).

/// Panics when `SLUICE_FAULT` names this site and this is the hit it names.
#[cfg(feature = "fault-injection")]
pub fn point(site: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    static PLAN: OnceLock<HashMap<String, u64>> = OnceLock::new();
    static HITS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let plan = PLAN.get_or_init(|| {
        std::env::var("SLUICE_FAULT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| {
                let (site, n) = entry.trim().rsplit_once(':')?;
                Some((site.to_owned(), n.parse().ok()?))
            })
            .collect()
    });
    let Some(&at) = plan.get(site) else {
        return;
    };
    let hit = {
        let mut hits = HITS.lock().unwrap_or_else(|p| p.into_inner());
        let count = hits
            .get_or_insert_with(HashMap::new)
            .entry(site.to_owned())
            .or_default();
        *count += 1;
        *count
    };
    if hit == at {
        panic!("injected fault at {site} (hit {hit})");
    }
}

/// Does nothing: this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_site: &str) {}
