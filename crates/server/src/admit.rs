//! What a task must be to be served, checked in one place for uploads, tune jobs, seed tasks,
//! start-up and `deltaspace import`: [`admit`] checks it against the loaded model and subspace,
//! [`label_set`] finds or makes the embeddings of its labels, and [`commit`] serves an admitted
//! task as an upload is served. Admission errors are this module's own ([`AdmitError`]); to a
//! client they are invalid tasks (422), start-up logs them.

use std::sync::Arc;

use deltaspace_core::classifier::{LabelSet, embed_labels_in_turns};
use deltaspace_core::det::DetError;
use deltaspace_core::model::{Encoder, Manifest, ModelError};
use deltaspace_core::subspace::Subspace;
use deltaspace_core::task::{Label, Task, TaskError, TaskLimits, validate_z};

use crate::batcher::BatcherHandle;
use crate::error::ApiError;
use crate::loaded::Core;
use crate::store::{
    Precondition, ServedCode, ServedHead, StoreError, StoredTask, TaskStore, labels_key,
};

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

/// The label set for `labels`: the one in use when a served task has the same labels, else
/// embedded now by the frozen model (blocking encoder runs), each chunk on a session lent by
/// `batcher` when the server is serving. Blocks: see [`BatcherHandle::lend_session`].
pub fn label_set(
    store: &TaskStore,
    encoder: &Encoder,
    labels: &[Label],
    batcher: Option<&BatcherHandle>,
) -> Result<Arc<LabelSet>, ModelError> {
    if let Some(set) = store.label_sets().get(&labels_key(labels)) {
        return Ok(set);
    }
    let lend = || batcher.and_then(BatcherHandle::lend_session);
    let embeddings = embed_labels_in_turns(labels, encoder, lend)?;
    Ok(Arc::new(LabelSet {
        labels: labels.to_vec(),
        embeddings,
    }))
}

/// Serves an admitted task as an upload is served: a stale `If-Match` fails before any label is
/// embedded (with a store only this process writes), the label set is found or made, and the
/// write is committed (checking `expect` again) before the task is served. Returns the stored task
/// and whether it is new. Blocking.
pub fn commit(
    core: &Core,
    task: Task,
    expect: &Precondition,
) -> Result<(Arc<StoredTask>, bool), ApiError> {
    // Only a store this process alone writes is sure to be current in memory: a replica that has
    // not yet applied another's write would refuse an etag the database accepts.
    let current = (!core.store.shared())
        .then(|| core.store.get(&task.name))
        .flatten();
    if let Precondition::Etag(etag) = expect
        && current.as_ref().is_some_and(|c| &c.etag != etag)
    {
        return Err(StoreError::EtagMismatch {
            name: task.name.clone(),
            expected: etag.clone(),
            found: current.map(|c| c.etag.clone()).unwrap_or_default(),
        }
        .into());
    }
    // Tasks with the same labels share their embeddings: only new labels cost an encoder run.
    let labels = label_set(
        &core.store,
        &core.encoder,
        &task.labels,
        Some(&core.batcher),
    )
    .map_err(|e| ApiError::Internal(e.into()))?;
    let subspace_id = core.subspace.id();
    Ok(core
        .store
        .put(task, labels, &subspace_id, &core.model_key, expect)?)
}
