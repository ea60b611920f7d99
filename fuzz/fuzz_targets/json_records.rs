#![no_main]
//! `checks::json_records` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::json_records(data));
