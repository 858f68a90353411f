//! A fixed set of sessions of one graph, lent one caller at a time.
//!
//! `Session::run` takes `&mut self` (ORT's `Run` is not reliably thread-safe), so concurrency comes
//! from several sessions, not from sharing one. Each session holds its own copy of the weights:
//! size the pool so that sessions × intra-op threads ≈ cores.

use std::sync::{Condvar, Mutex, PoisonError};

use ort::session::Session;

use super::Provider;

/// Sessions of one graph; `run` blocks until one is free.
///
/// A std `Mutex` (not tokio's) guards the free list: it is held only to push or pop, never across
/// a run, so async callers wrap whole runs in `spawn_blocking` instead.
pub struct SessionPool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
    provider: Provider,
}

impl SessionPool {
    pub(super) fn new(sessions: Vec<Session>, provider: Provider) -> Self {
        let size = sessions.len();
        Self {
            free: Mutex::new(sessions),
            returned: Condvar::new(),
            size,
            provider,
        }
    }

    /// How many sessions the pool holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The execution provider the sessions run on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Names of the graph's inputs, in graph order.
    pub fn input_names(&self) -> Vec<String> {
        self.run(|s| s.inputs().iter().map(|i| i.name().to_string()).collect())
    }

    /// Names of the graph's outputs, in graph order.
    pub fn output_names(&self) -> Vec<String> {
        self.run(|s| s.outputs().iter().map(|o| o.name().to_string()).collect())
    }

    /// Runs `f` with exclusive use of one session, waiting for one to be free.
    pub fn run<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let session = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(session) = free.pop() {
                    break session;
                }
                free = self
                    .returned
                    .wait(free)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Give the session back even if `f` panics, so the pool never shrinks.
        struct Return<'p> {
            pool: &'p SessionPool,
            session: Option<Session>,
        }
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Some(session) = self.session.take() {
                    self.pool
                        .free
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(session);
                    self.pool.returned.notify_one();
                }
            }
        }
        let mut lent = Return {
            pool: self,
            session: Some(session),
        };
        let session = lent
            .session
            .as_mut()
            .expect("the session was just lent. This is a bug.");
        f(session)
    }
}
