#![no_main]
//! `checks::export_spec` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::export_spec(data));
