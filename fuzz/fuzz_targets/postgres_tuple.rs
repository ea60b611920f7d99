#![no_main]
//! `checks::postgres_tuple` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::postgres_tuple(data));
