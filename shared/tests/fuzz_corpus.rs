//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same invariant checks as the
//! libFuzzer targets (`make fuzz`, nightly), on stable and without libFuzzer: every seed and
//! every fixed crash found by fuzzing stays a regression test.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_fuzz_corpus_file_passes_its_target_checks() {
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
        let dir = corpus(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seeds", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("read seed");
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target} {}: {why}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
