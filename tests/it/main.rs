//! Integration tests, one binary. Every test uses the real ONNX Runtime library
//! (scripts/setup-ort.sh) and the tiny random-weight model committed under tests/fixtures/tiny,
//! exported by `export/export.py --tiny` with PyTorch references beside it.
#![allow(clippy::unwrap_used)]

mod api;
mod cli;
mod helpers;
mod import;
mod layers;
mod page;
mod parity;
mod pg;
mod postgres;
mod reliability;
mod store;
mod subspace;
mod train;
