#![no_main]
//! `checks::csv` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::csv(data));
