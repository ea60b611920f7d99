#![no_main]
//! `checks::pipeline` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::pipeline(data));
