//! Reliability and security (docs/RELIABILITY.md): bad input on every route, SIGKILL during
//! uploads, load with a bounded queue and graceful shutdown, and tokens kept out of logs and
//! metrics. The crash and load tests run the real `deltaspace serve` binary as a child process;
//! their CI versions take seconds, and `scripts/soak-crash.sh` / `scripts/soak-load.sh` run the
//! same code for hundreds of kills or ten minutes through environment variables.

mod auth;
mod bad_input;
mod crash;
mod fuzz_corpus;
mod load;
pub(crate) mod process;
mod threads;
