//! A fixed set of sessions of one graph (or of any values), lent one caller at a time.
//!
//! `Session::run` takes `&mut self` (ORT's `Run` is not reliably thread-safe), so concurrency comes
//! from several sessions, not from sharing one. Each session holds its own copy of the weights:
//! size the pool so that sessions × intra-op threads ≈ cores.

use std::sync::{Condvar, Mutex, PoisonError};

use ort::session::Session;

use super::Provider;

/// A fixed set of values (sessions, or sessions with their bound buffers) lent one caller at a
/// time; `run` blocks until one is free.
///
/// A std `Mutex` (not tokio's) guards the free list: it is held only to push or pop, never across
/// a run, so async callers wrap whole runs in `spawn_blocking` instead.
pub struct Pool<T> {
    free: Mutex<Vec<T>>,
    returned: Condvar,
    size: usize,
}

impl<T> Pool<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self {
            size: items.len(),
            free: Mutex::new(items),
            returned: Condvar::new(),
        }
    }

    /// How many values the pool holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on the values not lent out right now.
    pub fn idle<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        f(&self.free.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` with exclusive use of one value, waiting for one to be free.
    pub fn run<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let item = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(item) = free.pop() {
                    break item;
                }
                free = self
                    .returned
                    .wait(free)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Give the value back even if `f` panics, so the pool never shrinks.
        struct Return<'p, T> {
            pool: &'p Pool<T>,
            item: Option<T>,
        }
        impl<T> Drop for Return<'_, T> {
            fn drop(&mut self) {
                if let Some(item) = self.item.take() {
                    self.pool
                        .free
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(item);
                    self.pool.returned.notify_one();
                }
            }
        }
        let mut lent = Return {
            pool: self,
            item: Some(item),
        };
        let item = lent
            .item
            .as_mut()
            .expect("the value was just lent. This is a bug.");
        f(item)
    }
}

/// Sessions of one graph, on one execution provider.
pub struct SessionPool {
    sessions: Pool<Session>,
    provider: Provider,
}

impl SessionPool {
    pub(super) fn new(sessions: Vec<Session>, provider: Provider) -> Self {
        Self {
            sessions: Pool::new(sessions),
            provider,
        }
    }

    /// How many sessions the pool holds.
    pub fn size(&self) -> usize {
        self.sessions.size()
    }

    /// The execution provider the sessions run on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Names of the graph's inputs, in graph order.
    pub fn input_names(&self) -> Vec<String> {
        self.run(|s| s.inputs().iter().map(|i| i.name().to_string()).collect())
    }

    /// Runs `f` with exclusive use of one session, waiting for one to be free.
    pub fn run<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        self.sessions.run(f)
    }
}
