#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forestsync_fuzz::dn_and_filter(data));
