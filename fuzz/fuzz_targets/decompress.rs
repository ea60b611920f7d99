#![no_main]
//! `checks::decompress` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::checks::decompress(data));
