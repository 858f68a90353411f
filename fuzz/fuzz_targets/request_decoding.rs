//! Request bodies of every route (the first byte picks it), decoded and checked as the server
//! does before it needs the model, then tokenized: `cargo fuzz run request_decoding`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::request_decoding(data));
