//! Task validation, from JSON or raw bytes, against the documented rules and the store's JSON
//! round trip: `cargo fuzz run task_validation`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::task_validation(data));
