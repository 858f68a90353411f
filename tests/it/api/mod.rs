//! The HTTP API end to end: a real `server::run` on a free local port with the tiny model and a
//! real HTTP client, one server per test (each with its own data directory), so tests run in
//! parallel.

pub(crate) mod helpers;
pub(crate) mod jobs;
mod routes;
mod serving;
