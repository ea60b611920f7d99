#![no_main]
//! `checks::retry_after` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::retry_after(data));
