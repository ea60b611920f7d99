//! Fuzz targets of sluice; the invariants are in [`checks`], shared with the stable replay
//! of the corpus (`shared/tests/fuzz_corpus.rs`).

pub mod checks;
