//! Start-up: load ONNX Runtime, the model and the subspace; serve every stored task (label
//! embeddings from the cache when the same model made them); import seed tasks once; warm up with
//! one batch through every DET; start the batcher. Also [`admit`], the one gate for new tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::admit::{AdmitError, admit, cached_embeddings, label_set, served_label_set};
use super::batcher::{self, Runner};
use super::jobs::INTERRUPTED;
use super::metrics::Metrics;
use ndarray::Array2;

use super::loaded::{Core, Serving};
use super::store::{self, Precondition, Record, StoreError, TaskStore, error_chain, labels_key};
use super::{Options, ServerError};
use deltaspace_core::classifier::{self, Code, LabelSet, embed_labels};
use deltaspace_core::model::{
    DeltaCache, Encoder, EncoderOptions, Manifest, ResidentEncoder, ResidentOptions, TextInput,
    Tokens,
};
use deltaspace_core::runtime::Runtime;
use deltaspace_core::subspace::Subspace;
use deltaspace_core::task::{Task, TaskLimits};

/// Loads everything, warms up and starts the batcher; the second value drains it when awaited.
pub async fn load(
    options: &Options,
    metrics: Arc<Metrics>,
) -> Result<(Core, tokio::task::JoinHandle<()>), ServerError> {
    let blocking_options = options.clone();
    let (runtime, encoder, subspace, store) =
        tokio::task::spawn_blocking(move || load_blocking(&blocking_options))
            .await
            .map_err(|_| ServerError::Interrupted)??;
    let encoder = Arc::new(encoder);
    let subspace = Arc::new(subspace);
    let model_key = model_key(encoder.manifest());
    metrics.tasks_registered.set(store.len() as i64);
    let (runner, serving) = {
        let (runtime, options) = (runtime.clone(), options.clone());
        let (encoder, subspace) = (encoder.clone(), subspace.clone());
        tokio::task::spawn_blocking(move || serving_model(&runtime, &options, encoder, subspace))
            .await
            .map_err(|_| ServerError::Interrupted)??
    };
    metrics.set_build_info(
        &serving.provider.to_string(),
        &encoder.manifest().name,
        &subspace.id(),
    );
    warm_up(&runner, &encoder, &subspace).await?;
    let mut limits = options.batch;
    limits.concurrency = serving.sessions;
    let (batcher, task) = batcher::spawn(limits, runner, metrics);
    let core = Core {
        runtime,
        encoder,
        serving,
        subspace,
        store: Arc::new(store),
        batcher,
        model_key,
    };
    Ok((core, task))
}

fn load_blocking(
    options: &Options,
) -> Result<(Runtime, Encoder, Subspace, TaskStore), ServerError> {
    let runtime = Runtime::load(options.runtime.clone())?;
    let encoder_options = EncoderOptions {
        sessions: options.sessions.max(1),
        one_det_graphs: options.one_det_graphs,
        ..EncoderOptions::default()
    };
    let encoder =
        Encoder::load(&runtime, &options.model_dir, &encoder_options).map_err(|source| {
            ServerError::Model {
                dir: options.model_dir.clone(),
                source,
            }
        })?;
    let subspace = Subspace::load(&options.subspace, encoder.manifest()).map_err(|source| {
        ServerError::Subspace {
            path: options.subspace.clone(),
            source,
        }
    })?;
    tracing::info!(subspace = %subspace.id(), d = subspace.d(), "subspace loaded");
    let backend = store::open(&options.store)?;
    // Read before the scan: a replica follows the others from here, so a write committed while
    // the tasks load is applied after (once, whichever way it arrives).
    let loaded_at = backend.last_change()?;
    let store = TaskStore::new(backend)
        .with_max_tasks(options.max_tasks)
        .with_loaded_at(loaded_at);
    load_tasks(&store, &encoder, &subspace, &options.task_limits)?;
    if let Some(dir) = options.seed_tasks_dir.as_deref() {
        seed_tasks(dir, &store, &encoder, &subspace, &options.task_limits)?;
    }
    // A job this replica was running when it stopped is over: nothing resumes it.
    let interrupted = store.with_db(|db| db.fail_unfinished_jobs(&options.replica, INTERRUPTED))?;
    if interrupted > 0 {
        tracing::warn!(
            jobs = interrupted,
            replica = %options.replica,
            "tune jobs cut short by the last stop are marked failed (interrupted)"
        );
    }
    Ok((runtime, encoder, subspace, store))
}

/// The model the batcher's runs go through, and what `/v1/info` says of it: a
/// [`ResidentEncoder`] holding the subspace's U and base in its sessions' memory when
/// `options.resident` asks for one on this provider, else `encoder` sending them with each run.
fn serving_model(
    runtime: &Runtime,
    options: &Options,
    encoder: Arc<Encoder>,
    subspace: Arc<Subspace>,
) -> Result<(Runner, Serving), ServerError> {
    if !options.resident.resident_on(encoder.provider()) {
        let deltas = Arc::new(DeltaCache::new(
            subspace.params(),
            options.delta_cache_bytes,
            options.runtime.intra_threads,
        ));
        let serving = Serving {
            provider: encoder.provider(),
            sessions: encoder.sessions(),
            resident: false,
            deltas: Some(deltas.clone()),
        };
        let runner: Runner = Arc::new(move |tokens: &Tokens, codes: &[Code<'_>]| {
            let model = encoder.with_params(subspace.params()).decoding(&deltas);
            classifier::embed_tokens(&model, tokens, codes)
        });
        return Ok((runner, serving));
    }
    let resident_options = ResidentOptions {
        sessions: options.sessions.max(1),
        buckets: Vec::new(),
        cuda_graphs: options.cuda_graphs,
    };
    let model = ResidentEncoder::load(
        runtime,
        &options.model_dir,
        subspace.params(),
        &resident_options,
    )
    .map_err(|source| ServerError::Model {
        dir: options.model_dir.clone(),
        source,
    })?;
    let serving = Serving {
        provider: model.provider(),
        sessions: model.sessions(),
        resident: true,
        deltas: None,
    };
    let runner: Runner = Arc::new(move |tokens: &Tokens, codes: &[Code<'_>]| {
        classifier::embed_tokens(&model, tokens, codes)
    });
    Ok((runner, serving))
}

/// Why a stored row or a seed file is not served; logged, never fatal.
#[derive(Debug, thiserror::Error)]
enum Unservable {
    #[error("not a task")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Invalid(#[from] AdmitError),
}

/// Names what makes a label embedding: the model's weights, and how the export pools and
/// truncates a description. A cache made otherwise (another model, or a re-export of the same
/// one with another pooling or `max_seq_len`) is ignored, and its label sets embedded again.
pub fn model_key(manifest: &Manifest) -> String {
    format!(
        "{}:{}:{}:{}",
        manifest.name, manifest.base_model_sha256, manifest.pooling, manifest.max_seq_len
    )
}

/// Serves every stored task made for this subspace; others stay stored but are not served.
/// Rows stream from the database one at a time; label embeddings come from the database's cache
/// (or a version-1 row), else from the encoder, once per distinct label set.
fn load_tasks(
    store: &TaskStore,
    encoder: &Encoder,
    subspace: &Subspace,
    limits: &TaskLimits,
) -> Result<(), ServerError> {
    let mut scan = Scan::start(store, encoder, subspace, limits)?;
    store.with_db(|db| db.each(&mut |record| scan.visit(&record)))?;
    scan.finish()
}

/// [`load_tasks`] under way: what the scan of the stored rows has found and made so far.
struct Scan<'a> {
    store: &'a TaskStore,
    encoder: &'a Encoder,
    subspace: &'a Subspace,
    limits: &'a TaskLimits,
    /// The loaded subspace's id: a row of another is kept, not served.
    subspace_id: String,
    /// Names the model whose label embeddings the cache holds ([`model_key`]).
    model_key: String,
    /// The database's cached label embeddings by label-set key; the scan takes what it uses.
    cached: HashMap<String, Vec<f32>>,
    /// Label sets made or restored in the scan, to cache in the database once it is over.
    to_cache: Vec<(String, Arc<LabelSet>)>,
    /// Label sets of stored tasks that are not served (another subspace, invalid): their cache
    /// rows stay.
    kept: HashSet<String>,
    /// Stored tasks of other subspaces (an older default, say), by subspace id: kept, not served.
    other_subspaces: BTreeMap<String, usize>,
    /// Label sets restored from version-1 rows.
    migrated: usize,
    /// Stored tasks of this subspace that are not valid, so not served.
    invalid: usize,
}

impl<'a> Scan<'a> {
    fn start(
        store: &'a TaskStore,
        encoder: &'a Encoder,
        subspace: &'a Subspace,
        limits: &'a TaskLimits,
    ) -> Result<Self, ServerError> {
        let model_key = model_key(encoder.manifest());
        let cached = store.with_db(|db| db.label_embeddings(&model_key))?;
        Ok(Self {
            store,
            encoder,
            subspace,
            limits,
            subspace_id: subspace.id(),
            model_key,
            cached,
            to_cache: Vec::new(),
            kept: HashSet::new(),
            other_subspaces: BTreeMap::new(),
            migrated: 0,
            invalid: 0,
        })
    }

    /// Serves `record` if it is a valid task of this subspace; counts it and keeps its label
    /// set's cache row otherwise.
    fn visit(&mut self, record: &Record) -> Result<(), StoreError> {
        let parsed = serde_json::from_str::<Task>(&record.task_json);
        let key: Option<String> = parsed.as_ref().ok().map(|task| labels_key(&task.labels));
        if record.subspace_id != self.subspace_id {
            *self
                .other_subspaces
                .entry(record.subspace_id.clone())
                .or_default() += 1;
            self.kept.extend(key);
            return Ok(());
        }
        let manifest = self.encoder.manifest();
        let task = parsed
            .map_err(|e| Unservable::Unreadable(e.into()))
            .and_then(|task| Ok(admit(task, manifest, self.subspace, self.limits)?));
        let task = match task {
            Ok(task) => task,
            Err(error) => {
                let error = error_chain(&error);
                tracing::warn!(task = %record.name, %error, "stored task is invalid; not served");
                self.invalid += 1;
                self.kept.extend(key);
                return Ok(());
            }
        };
        let key = key.unwrap_or_else(|| labels_key(&task.labels));
        let labels = match self.store.label_sets().get(&key) {
            Some(set) => set,
            None => self.label_set(key, &task, record)?,
        };
        self.store.insert_loaded(record, task, labels);
        Ok(())
    }

    /// The label set `key` of `task`, made once: its embeddings from the cache table, else a
    /// version-1 row's, else the encoder. A copy of the wrong shape or with a value that is not
    /// finite (a damaged row) counts as missing and is written anew.
    fn label_set(
        &mut self,
        key: String,
        task: &Task,
        record: &Record,
    ) -> Result<Arc<LabelSet>, StoreError> {
        let shape = (task.labels.len(), self.encoder.manifest().hidden());
        let restore = |values: Vec<f32>| cached_embeddings(values, shape);
        let from_table = self.cached.remove(&key).and_then(restore);
        let fresh = from_table.is_none();
        let from_row = || {
            (record.embeddings.clone())
                .filter(|(model, _)| *model == self.model_key)
                .and_then(|(_, values)| restore(values))
        };
        let embeddings = match (from_table, fresh.then(from_row).flatten()) {
            (Some(embeddings), _) => embeddings,
            (None, Some(embeddings)) => {
                self.migrated += 1;
                embeddings
            }
            (None, None) => {
                let embeddings = embed_labels(&task.labels, self.encoder)
                    .map_err(|e| StoreError::Visit(Box::new(e)))?;
                self.store.label_sets().count_embedded();
                embeddings
            }
        };
        let set = LabelSet {
            labels: task.labels.clone(),
            embeddings,
        };
        let set = self.store.label_sets().intern(&key, Arc::new(set));
        if fresh {
            self.to_cache.push((key, set.clone()));
        }
        Ok(set)
    }

    /// Caches the label sets the scan made or restored (one transaction), drops the version-1
    /// copies in the served rows, forgets cached sets no stored task has any more (deleted or
    /// replaced since the last start, so the table does not grow with churn), and says what
    /// was loaded.
    fn finish(self) -> Result<(), ServerError> {
        let (store, model_key, subspace_id) = (self.store, &self.model_key, &self.subspace_id);
        store.with_db(|db| {
            let sets: Vec<(&str, &Array2<f32>)> = (self.to_cache.iter())
                .map(|(key, set)| (key.as_str(), &set.embeddings))
                .collect();
            db.save_label_embeddings(model_key, &sets)?;
            db.drop_row_embeddings(model_key, subspace_id)
        })?;
        let unused: Vec<String> = (self.cached.keys())
            .filter(|key| !self.kept.contains(*key))
            .cloned()
            .collect();
        let forgotten = store.with_db(|db| db.forget_label_embeddings(model_key, &unused))?;
        tracing::info!(
            served = store.len(),
            label_sets = store.label_sets().len(),
            other_subspace = self.other_subspaces.values().sum::<usize>(),
            invalid = self.invalid,
            embedded = store.label_sets().embedded(),
            migrated = self.migrated,
            forgotten,
            "tasks loaded"
        );
        for (other, count) in &self.other_subspaces {
            tracing::warn!(
                tasks = count,
                subspace = %other,
                loaded = %subspace_id,
                "stored tasks made for another subspace are kept but not served: serve them with \
                 that subspace ([model] subspace), or tune them again for the loaded one (deltaspace \
                 tune) and upload them (docs/API.md, \"Changing the subspace\")"
            );
        }
        Ok(())
    }
}

/// Imports each `*.json` task of `dir` that is not stored and was never imported before (so a
/// seed task deleted by a user stays deleted). A bad file is logged and skipped.
fn seed_tasks(
    dir: &Path,
    store: &TaskStore,
    encoder: &Encoder,
    subspace: &Subspace,
    limits: &TaskLimits,
) -> Result<(), ServerError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::debug!(dir = %dir.display(), "no seed task directory");
        return Ok(());
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let key = model_key(encoder.manifest());
    let mut imported = 0;
    // Files of seed tasks seeded before, not served now, and stored for another subspace (an older default).
    let mut elsewhere = Vec::new();
    for path in paths {
        let task = Task::load(&path)
            .map_err(|e| Unservable::Unreadable(e.into()))
            .and_then(|t| Ok(admit(t, encoder.manifest(), subspace, limits)?));
        let task = match task {
            Ok(task) => task,
            Err(error) => {
                let error = error_chain(&error);
                tracing::warn!(file = %path.display(), %error, "seed task skipped");
                continue;
            }
        };
        if store.get(&task.name).is_some() {
            continue;
        }
        if store.with_db(|db| db.was_seeded(&task.name))? {
            // Deleted since (it stays deleted), or stored for another subspace.
            if store
                .with_db(|db| db.stored_subspace(&task.name))?
                .is_some()
            {
                elsewhere.push(path.display().to_string());
            }
            continue;
        }
        // Before serving: no batcher to borrow a session from.
        let labels = label_set(store, encoder, &key, &task.labels, None)?;
        let name = task.name.clone();
        // Only an imported task counts as seeded: one refused now (at max_tasks, say) is tried
        // again at the next start.
        match store.put(task, labels, &subspace.id(), &key, &Precondition::Absent) {
            Ok(_) => {
                imported += 1;
                store.with_db(|db| db.mark_seeded(&name))?;
            }
            // Another replica starting at the same time imported it first.
            Err(StoreError::EtagMismatch { .. }) => {
                store.with_db(|db| db.mark_seeded(&name))?;
            }
            Err(error) => tracing::warn!(task = %name, %error, "seed task not imported"),
        }
    }
    if imported > 0 {
        tracing::info!(imported, dir = %dir.display(), "seed tasks imported");
    }
    if !elsewhere.is_empty() {
        tracing::warn!(
            files = %elsewhere.join(" "),
            "seed tasks imported before are stored for another subspace (an older default) and not \
             served; each seed is imported once, so these are not imported over them. `deltaspace \
             import FILE...` with these files imports them for the loaded subspace, replacing the old \
             rows (docs/API.md, \"Changing the subspace\")"
        );
    }
    Ok(())
}

/// How a replica serves a row another replica wrote: parsed and admitted as at start-up, its
/// label set from memory, else the store's cache, else the encoder (and then cached). `None` for
/// a row this replica does not serve (another subspace, invalid), as at start-up.
pub(crate) fn prepare(core: &Core, limits: TaskLimits) -> store::follow::Prepare {
    let core = core.clone();
    Arc::new(move |record: &store::Record| {
        if record.subspace_id != core.subspace.id() {
            return Ok(None);
        }
        let admitted = serde_json::from_str::<Task>(&record.task_json)
            .map_err(|e| Unservable::Unreadable(e.into()))
            .and_then(|task| {
                Ok(admit(
                    task,
                    core.encoder.manifest(),
                    &core.subspace,
                    &limits,
                )?)
            });
        let task = match admitted {
            Ok(task) => task,
            Err(error) => {
                let error = error_chain(&error);
                tracing::warn!(task = %record.name, %error, "stored task is invalid; not served");
                return Ok(None);
            }
        };
        // A failure here is transient (the store or the encoder): the change is read again.
        let labels = served_label_set(&core, &task.labels).map_err(Box::new)?;
        Ok(Some((task, labels)))
    })
}

/// One short batch with a row per DET, so the first request does not pay for ORT's first run.
async fn warm_up(
    runner: &Runner,
    encoder: &Arc<Encoder>,
    subspace: &Arc<Subspace>,
) -> Result<(), ServerError> {
    let runner = runner.clone();
    let dets: Vec<_> = encoder
        .manifest()
        .dets
        .iter()
        .filter_map(|layout| layout.name.parse().ok())
        .collect();
    let z = vec![0.0f32; subspace.d()];
    let encoder = encoder.clone();
    tokio::task::spawn_blocking(move || {
        if dets.is_empty() {
            return Ok(());
        }
        let inputs = vec![TextInput::single("warm-up"); dets.len()];
        let tokens = encoder.tokenize(&inputs)?;
        let codes: Vec<Code<'_>> = dets.iter().map(|&det| (&z[..], det)).collect();
        runner(&tokens, &codes).map(|_| ())
    })
    .await
    .map_err(|_| ServerError::Interrupted)?
    .map_err(ServerError::WarmUp)
}
