#![no_main]
//! `checks::link_header` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::link_header(data));
