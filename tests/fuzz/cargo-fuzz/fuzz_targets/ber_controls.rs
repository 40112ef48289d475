#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forestsync_fuzz::ber_controls(data));
