//! What a task must be to be served, checked in one place for uploads, tune jobs, seed tasks,
//! start-up and `deltaspace import`: [`admit`] checks it against the loaded model and subspace,
//! [`label_set`] finds or makes the embeddings of its labels, and [`commit`] serves an admitted
//! task as an upload is served. Admission errors are this module's own ([`AdmitError`]); to a
//! client they are invalid tasks (422), start-up logs them.

use std::sync::{Arc, PoisonError};

use ndarray::Array2;

use deltaspace_core::classifier::{LabelSet, embed_labels_in_turns};
use deltaspace_core::det::DetError;
use deltaspace_core::model::{Encoder, Manifest};
use deltaspace_core::subspace::Subspace;
use deltaspace_core::task::{Label, Task, TaskError, TaskLimits, validate_z};

use crate::ServerError;
use crate::batcher::BatcherHandle;
use crate::error::ApiError;
use crate::loaded::Core;
use crate::store::{Precondition, ServedCode, ServedHead, StoredTask, TaskStore, labels_key};

/// Why a task cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Det(#[from] DetError),
    #[error("head: a prototype has {got} values, the model's embeddings {hidden}")]
    PrototypeWidth { got: usize, hidden: usize },
    #[error("z[{index}] = {value} is beyond what the server holds (f16: |z_i| ≤ 65504)")]
    ZBeyondF16 { index: usize, value: f32 },
    /// Rounding to f16 can lengthen z by up to 2⁻¹¹ of its norm: a z just within the bound would
    /// be served now and refused when the stored task is read again (at start, on a replica).
    #[error("z as the server holds it (each value rounded to f16): {0}")]
    RoundedZ(TaskError),
}

impl From<AdmitError> for ApiError {
    /// A task that cannot be served is an invalid task to the client.
    fn from(error: AdmitError) -> Self {
        Self::InvalidTask(error.to_string())
    }
}

/// Checks an incoming task against the loaded model and subspace, rounds its z and head to what
/// is served, and records the subspace's full id in it.
pub fn admit(
    mut task: Task,
    manifest: &Manifest,
    subspace: &Subspace,
    limits: &TaskLimits,
) -> Result<Task, AdmitError> {
    if let Some(reference) = subspace.other(task.subspace.as_deref()) {
        return Err(TaskError::Subspace {
            task: reference.to_string(),
            loaded: subspace.id(),
        }
        .into());
    }
    task.validate(subspace.d(), limits)?;
    task.z = ServedCode::round(std::mem::take(&mut task.z))
        .map_err(|(index, value)| AdmitError::ZBeyondF16 { index, value })?;
    validate_z(&task.z, subspace.d(), limits).map_err(AdmitError::RoundedZ)?;
    if let Some(head) = task.head.take() {
        let hidden = manifest.hidden();
        if let Some(wrong) = head.prototypes.iter().flatten().find(|p| p.len() != hidden) {
            return Err(AdmitError::PrototypeWidth {
                got: wrong.len(),
                hidden,
            });
        }
        task.head = Some(ServedHead::round(head));
    }
    task.det.column(manifest)?;
    task.subspace = Some(subspace.id());
    Ok(task)
}

/// The label set for `labels`: the one in use when a served task has the same labels, else its
/// embeddings cached in the store (by this replica or another, for the model `model_key`), else
/// embedded now by the frozen model (the task's write caches them, in its transaction). Each
/// chunk of an embedding runs on a session lent by `batcher` when the server is serving.
/// Concurrent calls for one new set embed it once: the later ones wait their turn and find it in
/// memory while the first one's task holds it. Blocks: see [`BatcherHandle::lend_session`].
pub fn label_set(
    store: &TaskStore,
    encoder: &Encoder,
    model_key: &str,
    labels: &[Label],
    batcher: Option<&BatcherHandle>,
) -> Result<Arc<LabelSet>, ServerError> {
    let key = labels_key(labels);
    let sets = store.label_sets();
    if let Some(set) = sets.get(&key) {
        return Ok(set);
    }
    let turn = sets.turn(&key);
    let _making = turn.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(set) = sets.get(&key) {
        return Ok(set);
    }
    let shape = (labels.len(), encoder.manifest().hidden());
    let cached = store
        .with_db(|db| db.label_embedding(model_key, &key))?
        .and_then(|values| cached_embeddings(values, shape));
    let embeddings = match cached {
        Some(embeddings) => embeddings,
        None => {
            let lend = || batcher.and_then(BatcherHandle::lend_session);
            let embeddings =
                embed_labels_in_turns(labels, encoder, lend).map_err(ServerError::Labels)?;
            sets.count_embedded();
            embeddings
        }
    };
    let set = LabelSet {
        labels: labels.to_vec(),
        embeddings,
    };
    Ok(sets.intern(&key, Arc::new(set)))
}

/// [`label_set`] for a serving server: its store, encoder and model, chunks on its batcher's
/// sessions.
pub(crate) fn served_label_set(
    core: &Core,
    labels: &[Label],
) -> Result<Arc<LabelSet>, ServerError> {
    let batcher = Some(&core.batcher);
    label_set(&core.store, &core.encoder, &core.model_key, labels, batcher)
}

/// Serves an admitted task as an upload is served: a failed precondition or a full store fails
/// before any label is embedded (with a store only this process writes), the label set is found
/// or made, and the write is committed (checking `expect` again) before the task is served.
/// Returns the stored task and whether it is new. Blocking.
pub fn commit(
    core: &Core,
    task: Task,
    expect: &Precondition,
) -> Result<(Arc<StoredTask>, bool), ApiError> {
    // Only a store this process alone writes is sure to be current in memory: a replica that has
    // not yet applied another's write would refuse an etag the database accepts. There, a write
    // that `put` would refuse is refused before any label is embedded.
    if !core.store.shared() {
        let current = core.store.get(&task.name);
        expect.check(&task.name, current.as_ref().map(|c| &*c.etag))?;
        if current.is_none() {
            core.store.check_room(1)?;
        }
    }
    // Tasks with the same labels share their embeddings: only new labels cost an encoder run.
    let labels = served_label_set(core, &task.labels).map_err(|e| match e {
        ServerError::Store(e) => e.into(),
        e => ApiError::Internal(e.into()),
    })?;
    let subspace_id = core.subspace.id();
    Ok(core
        .store
        .put(task, labels, &subspace_id, &core.model_key, expect)?)
}

/// Label embeddings read back from the database, when they have `shape` and every value is finite;
/// anything else is damaged (a NaN would reach every task of those labels) and is embedded anew.
pub(crate) fn cached_embeddings(values: Vec<f32>, shape: (usize, usize)) -> Option<Array2<f32>> {
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    Array2::from_shape_vec(shape, values).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_embeddings_of_the_wrong_shape_or_not_finite_are_damaged() {
        assert!(cached_embeddings(vec![0.5; 6], (2, 3)).is_some());
        assert!(cached_embeddings(vec![0.5; 5], (2, 3)).is_none());
        for bad in [f32::NAN, f32::INFINITY] {
            let mut values = vec![0.5; 6];
            values[4] = bad;
            assert!(cached_embeddings(values, (2, 3)).is_none(), "{bad}");
        }
    }
}
