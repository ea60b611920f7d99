#![no_main]
//! `checks::sweep_config` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::sweep_config(data));
