#![no_main]
//! `checks::ndjson` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::ndjson(data));
