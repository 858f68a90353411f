//! [`DeltaCache`]: the decoded delta U_det z of recently served codes, so that a run over a few
//! tasks does not read all of U.
//!
//! The serving graph rebuilds θ_det = base_det + U_det z for every row. U_det is [D, d]: 302 MB
//! per DET at d = 1,024 for MiniLM, read whole by every run whatever its rows. When a run's rows
//! hold T distinct codes z_1 … z_T with T < d, the same graph gives the same θ when fed
//!
//! ```text
//! U'_det = [U_det z_1 … U_det z_T]   ([D, T])   and   z'_row = e_t   (the row's code, one-hot)
//! ```
//!
//! since base_det + U'_det e_t = base_det + U_det z_t: only the order of the sums inside U_det z
//! differs. The cache keeps U_det z per (DET, z), least recently used out first, so a task that
//! keeps coming costs a copy of its D values per run instead of a D × d product. Tasks that miss
//! are decoded together, one pass over U per DET on every core: about what reading U in the run
//! costs. Below [`MIN_DECODED_D`] runs read U as before. A code's key is
//! z itself (its bits), so an updated task misses once and its old entry ages out.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hashlink::LruCache;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::inputs::{Batch, DeltaParams};

/// Below this d, runs read U as before: U is then small (D × d floats, 18 MB per DET at d = 64
/// for MiniLM, 4.7 MB at d = 16), and filling the cache costs more than reading it. Measured at
/// d = 16 (`scripts/bench-http.sh`, 1 text per request from 16 clients): decoding every batch
/// cost 7 % of the throughput with 100 tasks and 25 % with 1M, where nearly every code misses.
pub const MIN_DECODED_D: usize = 64;

/// A cached delta's key: the DET column and z's bits.
type Key = (usize, Box<[u32]>);

/// U_det z of recently served (DET, z): see the module docs.
pub struct DeltaCache {
    entries: Mutex<LruCache<Key, Arc<[f32]>>>,
    /// Most entries held (0: the cache is off).
    capacity: usize,
    /// The U the deltas were decoded through: a cache is used only with its own params.
    params: ParamsIdentity,
    /// Threads that decode missing deltas.
    threads: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Which U and base a [`DeltaParams`] holds, cheaply: where each U lives, its shape, and a few of
/// its values (so that params freed and others allocated in their place do not pass).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamsIdentity(Vec<(usize, (usize, usize), Vec<u32>)>);

impl ParamsIdentity {
    fn of(params: &DeltaParams) -> Self {
        let dets = params.dets().iter().map(|det| {
            let values = det.u.as_slice().unwrap_or(&[]);
            let stride = (values.len() / 16).max(1);
            let sample = values.iter().step_by(stride).map(|v| v.to_bits()).collect();
            (det.u.as_ptr() as usize, det.u.dim(), sample)
        });
        Self(dets.collect())
    }
}

impl std::fmt::Debug for DeltaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeltaCache").field(&self.stats()).finish()
    }
}

/// What a [`DeltaCache`] holds and how it has served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeltaCacheStats {
    /// Entries held now, and the most it holds.
    pub entries: usize,
    pub capacity: usize,
    /// Deltas found, and deltas computed, since it was made.
    pub hits: u64,
    pub misses: u64,
}

/// A run's inputs in decoded form: z' [rows, T] (one-hot) and U'_det [D, T] for every DET.
pub(crate) struct Decoded {
    pub z: Array2<f32>,
    pub u: Vec<Array2<f32>>,
}

impl DeltaCache {
    /// A cache of at most `bytes` of deltas decoded through `params`, on `threads` threads (0:
    /// one per core). It holds whole deltas only: a budget below one delta (D floats) turns it
    /// off, as 0 does.
    pub fn new(params: &DeltaParams, bytes: usize, threads: usize) -> Self {
        let largest = params.dets().iter().map(|det| det.u.nrows()).max();
        let capacity = bytes / (largest.unwrap_or(1).max(1) * size_of::<f32>());
        if bytes > 0 && capacity == 0 {
            tracing::warn!(bytes, "the delta cache's budget holds no delta: it is off");
        }
        let entries = LruCache::new(NonZeroUsize::new(capacity).map_or(1, NonZeroUsize::get));
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            entries: Mutex::new(entries),
            capacity,
            params: ParamsIdentity::of(params),
            threads: if threads == 0 { cores } else { threads },
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Entries held, capacity, hits and misses.
    pub fn stats(&self) -> DeltaCacheStats {
        DeltaCacheStats {
            entries: self.lock().len(),
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The batch in decoded form, when that is cheaper: the cache is on and made for `params`,
    /// d is at least [`MIN_DECODED_D`] and the batch has fewer distinct codes than d. The caller
    /// has checked the batch's shapes against `params`.
    ///
    /// Every row of the decoded batch reads the same U', so a non-finite delta would spoil the
    /// whole batch where reading U spoils one row; the tasks' checks (finite z) keep that out.
    pub(crate) fn decode(&self, batch: Batch<'_>, params: &DeltaParams) -> Option<Decoded> {
        if self.capacity == 0 || params.d() < MIN_DECODED_D {
            return None;
        }
        if ParamsIdentity::of(params) != self.params {
            tracing::warn!("a delta cache was asked to decode through other params: not used");
            return None;
        }
        let (first_rows, row_code) = distinct_codes(batch.z, params.d())?;
        let codes = first_rows.len();
        let mut u = Vec::with_capacity(params.dets().len());
        let mut z = Array2::zeros((row_code.len(), codes));
        for (row, &code) in row_code.iter().enumerate() {
            z[[row, code]] = 1.0;
        }
        for (column, det) in params.dets().iter().enumerate() {
            let used = codes_using(batch.det_select, &row_code, codes, column);
            let keys: Vec<Key> = (used.iter())
                .map(|&code| (column, bits(batch.z.row(first_rows[code])).into()))
                .collect();
            let deltas = self.deltas(&det.u, &first_rows, &used, keys, batch.z);
            let mut decoded = Array2::zeros((det.u.nrows(), codes));
            for (code, delta) in deltas {
                decoded
                    .column_mut(code)
                    .assign(&ArrayView1::from(&delta[..]));
            }
            u.push(decoded);
        }
        Some(Decoded { z, u })
    }

    /// U z of each code in `used` (an index into `first_rows`, the row of `z` where the code
    /// first appears; `keys` in the same order), from the cache or computed in one product for
    /// all that miss.
    fn deltas(
        &self,
        u: &Array2<f32>,
        first_rows: &[usize],
        used: &[usize],
        keys: Vec<Key>,
        z: ArrayView2<'_, f32>,
    ) -> Vec<(usize, Arc<[f32]>)> {
        let mut found = Vec::with_capacity(used.len());
        let mut missing = Vec::new();
        {
            let mut entries = self.lock();
            for (&code, key) in used.iter().zip(keys) {
                match entries.get(&key) {
                    Some(delta) => found.push((code, Arc::clone(delta))),
                    None => missing.push((code, key)),
                }
            }
        }
        self.hits.fetch_add(found.len() as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return found;
        }
        let rows: Vec<usize> = missing.iter().map(|&(code, _)| first_rows[code]).collect();
        let product = decode_in_parallel(u, z.select(Axis(0), &rows).view(), self.threads);
        let decoded: Vec<(usize, Key, Arc<[f32]>)> = (missing.into_iter())
            .zip(product.rows())
            .map(|((code, key), delta)| (code, key, delta.iter().copied().collect()))
            .collect();
        let mut entries = self.lock();
        for (code, key, delta) in decoded {
            entries.insert(key, Arc::clone(&delta));
            found.push((code, delta));
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Key, Arc<[f32]>>> {
        // A panic mid-update leaves at worst a stale entry keyed by its own z: still correct.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The deltas of `codes` [m, d] through `u` [D, d], as rows: [m, D] = codes · Uᵀ, over U's rows
/// cut into one block per thread. The product reads all of U once, like a run that reads U (whose
/// ONNX Runtime GEMM uses every core too), so a batch of tasks that all miss costs about what it
/// did before the cache.
fn decode_in_parallel(u: &Array2<f32>, codes: ArrayView2<'_, f32>, threads: usize) -> Array2<f32> {
    let block = u.nrows().div_ceil(threads.max(1)).max(1);
    let mut deltas = Array2::zeros((codes.nrows(), u.nrows()));
    std::thread::scope(|scope| {
        let blocks = u.axis_chunks_iter(Axis(0), block);
        for (u_block, mut out) in blocks.zip(deltas.axis_chunks_iter_mut(Axis(1), block)) {
            scope.spawn(move || general_mat_mul(1.0, &codes, &u_block.t(), 0.0, &mut out));
        }
    });
    deltas
}

/// The distinct codes of a batch's rows, as the row where each first appears, and each row's
/// code (an index into the first list); `None` when there are `d` or more (decoding would cost
/// more than U itself).
fn distinct_codes(z: ArrayView2<'_, f32>, d: usize) -> Option<(Vec<usize>, Vec<usize>)> {
    let mut first_rows = Vec::new();
    let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut row_code = Vec::with_capacity(z.nrows());
    for (row, values) in z.rows().into_iter().enumerate() {
        let next = first_rows.len();
        let code = *seen.entry(bits(values)).or_insert(next);
        if code == next {
            first_rows.push(row);
            if first_rows.len() >= d {
                return None;
            }
        }
        row_code.push(code);
    }
    Some((first_rows, row_code))
}

/// A code's bits: its identity in the cache (−0 and 0 differ, which costs at most a miss).
fn bits(z: ArrayView1<'_, f32>) -> Vec<u32> {
    z.iter().map(|v| v.to_bits()).collect()
}

/// The codes whose rows switch on the DET in `column`.
fn codes_using(
    det_select: ArrayView2<'_, f32>,
    row_code: &[usize],
    codes: usize,
    column: usize,
) -> Vec<usize> {
    let mut used = vec![false; codes];
    for (row, &code) in row_code.iter().enumerate() {
        used[code] |= det_select[[row, column]] != 0.0;
    }
    (0..codes).filter(|&code| used[code]).collect()
}
