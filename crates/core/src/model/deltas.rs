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

use super::encoder::{Batch, DeltaParams};
use super::manifest::Manifest;

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
    hits: AtomicU64,
    misses: AtomicU64,
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
    /// A cache of at most `bytes` of deltas of `manifest`'s DETs (0 turns it off).
    pub fn new(manifest: &Manifest, bytes: usize) -> Self {
        let largest = manifest.dets.iter().map(|det| det.size).max().unwrap_or(1);
        let capacity = bytes / (largest.max(1) * size_of::<f32>());
        let entries = LruCache::new(NonZeroUsize::new(capacity).map_or(1, NonZeroUsize::get));
        Self {
            entries: Mutex::new(entries),
            capacity,
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

    /// The batch in decoded form, when that is cheaper: the cache is on, d is at least
    /// [`MIN_DECODED_D`] and the batch has fewer distinct codes than d. The caller has checked
    /// the batch's shapes against `params`.
    pub(crate) fn decode(&self, batch: Batch<'_>, params: &DeltaParams) -> Option<Decoded> {
        if self.capacity == 0 || params.d() < MIN_DECODED_D {
            return None;
        }
        let (codes, row_code) = distinct_codes(batch.z, params.d())?;
        let mut u = Vec::with_capacity(params.dets().len());
        let mut z = Array2::zeros((row_code.len(), codes.len()));
        for (row, &code) in row_code.iter().enumerate() {
            z[[row, code]] = 1.0;
        }
        for (column, det) in params.dets().iter().enumerate() {
            let used = codes_using(batch.det_select, &row_code, codes.len(), column);
            let deltas = self.deltas(column, &det.u, &codes, &used, batch.z);
            let mut decoded = Array2::zeros((det.u.nrows(), codes.len()));
            for (code, delta) in deltas {
                decoded
                    .column_mut(code)
                    .assign(&ArrayView1::from(&delta[..]));
            }
            u.push(decoded);
        }
        Some(Decoded { z, u })
    }

    /// U z of each code in `used` (by index into `codes`, whose rows of `z` give each code's z),
    /// from the cache or computed in one product for all that miss.
    fn deltas(
        &self,
        column: usize,
        u: &Array2<f32>,
        codes: &[usize],
        used: &[usize],
        z: ArrayView2<'_, f32>,
    ) -> Vec<(usize, Arc<[f32]>)> {
        let key = |code: usize| -> Key {
            (
                column,
                z.row(codes[code]).map(|v| v.to_bits()).to_vec().into(),
            )
        };
        let mut found = Vec::with_capacity(used.len());
        let mut missing = Vec::new();
        {
            let mut entries = self.lock();
            for &code in used {
                match entries.get(&key(code)) {
                    Some(delta) => found.push((code, Arc::clone(delta))),
                    None => missing.push(code),
                }
            }
        }
        self.hits.fetch_add(found.len() as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return found;
        }
        let rows: Vec<usize> = missing.iter().map(|&code| codes[code]).collect();
        let product = decode_in_parallel(u, z.select(Axis(0), &rows).view());
        let mut entries = self.lock();
        for (&code, delta) in missing.iter().zip(product.rows()) {
            let delta: Arc<[f32]> = delta.iter().copied().collect();
            entries.insert(key(code), Arc::clone(&delta));
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
/// cut into one block per core. The product reads all of U once, like a run that reads U (whose
/// ONNX Runtime GEMM uses every core too), so a batch of tasks that all miss costs about what it
/// did before the cache.
fn decode_in_parallel(u: &Array2<f32>, codes: ArrayView2<'_, f32>) -> Array2<f32> {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let block = u.nrows().div_ceil(cores).max(1);
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
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        let next = first_rows.len();
        let code = *seen.entry(bits).or_insert(next);
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
