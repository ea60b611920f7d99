#![no_main]
//! `checks::job_spec` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::job_spec(data));
