#![no_main]
//! `checks::key_template` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::key_template(data));
