//! Tune jobs: labeled examples in, a served task out. `POST /v1/tasks/{name}/tune` hands a checked
//! [`TuneOrder`] to [`Jobs::submit`], which records the job and answers at once; the job then waits
//! for one of `max_tune_jobs` slots, runs stage 2 ([`tune_gradient`], the same code as
//! `deltaspace tune`) on a thread of its own, and serves the task it found as `PUT` would.
//!
//! A job's encoder is its own (the serving graph once more, and the gradient graph), loaded on
//! first use, and yields to predictions twice over: its threads run at the lowest CPU priority,
//! and it is *paced*: before each of its runs it waits until no prediction is queued or running
//! (at most [`MAX_YIELD`]), so predictions wait for at most one small run of a job. Jobs
//! are recorded in the task store when accepted, at every evaluation and when they end; a restart
//! marks the jobs it cut short as failed (`interrupted`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::admit::{admit, commit};
use crate::error::{ApiError, blocking};
use crate::loaded::Core;
use crate::metrics::Metrics;
use crate::store::{
    JobRecord, JobResult, JobState, Precondition, StoredTask, TaskStore, error_chain, now_ms,
};
use deltaspace_core::classifier::{Classes, embed_labels};
use deltaspace_core::det::DetKind;
use deltaspace_core::model::{Encoder, EncoderOptions, Pace};
use deltaspace_core::task::{Label, Task, TaskLimits};
use deltaspace_core::tuning::batch::TrainTask;
use deltaspace_core::tuning::data::{Example, TaskData};
use deltaspace_core::tuning::fit::{FitOptions, Schedule, StepReport};
use deltaspace_core::tuning::tune::{Start, TUNING, Target, Tuned, tune_gradient};

/// The longest a job's run waits for predictions to finish before it runs anyway, so that a job
/// still advances under a steady load.
pub const MAX_YIELD: Duration = Duration::from_secs(1);

/// Why a job that a restart or shutdown cut short failed.
pub const INTERRUPTED: &str = "interrupted";

/// Why a job ended when a cancel stopped it; any other reason is a failure, even when a cancel
/// was asked too late to stop it.
const CANCELLED: &str = "cancelled";

/// How often a replica renews the leases of its jobs (and looks for cancels asked elsewhere).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// How long a job's lease lasts without renewal: past it, any replica fails the job (its owner
/// is gone, for good or under another name).
pub const LEASE: Duration = Duration::from_secs(300);

/// How long a finished tune job keeps trying to serve its task while the store is unavailable.
pub const COMMIT_PATIENCE: Duration = Duration::from_secs(120);

/// The first wait before a store write is tried again; each retry doubles it, up to [`HEARTBEAT`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

fn next_retry(wait: Duration) -> Duration {
    (wait * 2).min(HEARTBEAT)
}

/// A checked tune request: what a job tunes.
#[derive(Debug, Clone)]
pub struct TuneOrder {
    /// Where z starts (stage 2's starts: normal, upstream, or both).
    pub starts: Vec<Start<'static>>,
    pub labels: Vec<Label>,
    pub train: Vec<Example>,
    /// None: hold a stratified part of `train` out for dev.
    pub dev: Option<Vec<Example>>,
    /// Empty when the request gave no test examples.
    pub test: Vec<Example>,
    pub det: Option<DetKind>,
    pub steps: usize,
    pub seconds: f64,
    /// Evaluations without improvement before a DET stops (0: never).
    pub patience: usize,
    pub seed: u64,
}

/// Bounds on tune jobs (`[server]` in the configuration, reported by `/v1/info`).
#[derive(Debug, Clone, Copy)]
pub struct TuneLimits {
    /// Jobs that run at once.
    pub max_jobs: usize,
    /// Jobs that may wait for a slot; one more answers 429.
    pub max_queued: usize,
    /// Examples in one request, train, dev and test together.
    pub max_examples: usize,
    /// The longest budget a request may ask for, and the budget of one that asks none.
    pub max_seconds: u64,
    /// Rows per encoder run of a job: what a prediction may have to wait behind.
    pub run_rows: usize,
}

impl Default for TuneLimits {
    fn default() -> Self {
        Self {
            max_jobs: 1,
            max_queued: 8,
            max_examples: 2_000,
            max_seconds: 600,
            run_rows: 16,
        }
    }
}

/// This replica's tune jobs.
pub struct Jobs {
    limits: TuneLimits,
    /// Bounds on the task a job makes, as on uploads.
    task_limits: TaskLimits,
    /// Names this replica in the jobs it records (`[server] replica`).
    owner: String,
    metrics: Arc<Metrics>,
    /// Jobs queued or running here.
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    slots: Arc<Semaphore>,
    /// The jobs' own encoder, loaded by the first job.
    encoder: Mutex<Option<Arc<Encoder>>>,
    stopping: Arc<AtomicBool>,
}

/// A job queued or running: its record as it changes, and whether it was asked to stop.
struct LiveJob {
    record: Mutex<JobRecord>,
    /// Set once the job's first record is saved. Until then heartbeats leave it alone, so a
    /// submission answered 503 because that save failed leaves no record behind.
    recorded: AtomicBool,
    cancelled: AtomicBool,
    /// Wakes the job from its wait for a slot when it is cancelled.
    wake: tokio::sync::Notify,
}

impl LiveJob {
    fn record(&self) -> std::sync::MutexGuard<'_, JobRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the job to stop: at once while it waits for a slot, at its next step while it runs.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        tracing::info!(job = %self.record().job, "tune job cancel asked");
    }
}

impl Jobs {
    pub fn new(
        limits: TuneLimits,
        task_limits: TaskLimits,
        owner: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_jobs.max(1))),
            limits,
            task_limits,
            owner,
            metrics,
            live: Mutex::new(HashMap::new()),
            encoder: Mutex::new(None),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records a new job for task `name` and starts it; answers once it is recorded.
    pub async fn submit(
        self: &Arc<Self>,
        core: &Core,
        name: &str,
        order: TuneOrder,
        expect: Precondition,
    ) -> Result<JobRecord, ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let record = JobRecord::queued(
            new_job_id(),
            name.to_string(),
            order.steps,
            self.owner.clone(),
            now_ms(),
        );
        let job = Arc::new(LiveJob {
            record: Mutex::new(record.clone()),
            recorded: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        {
            let mut live = self.live();
            let capacity = self.limits.max_jobs + self.limits.max_queued;
            if live.len() >= capacity {
                return Err(ApiError::TooManyJobs(format!(
                    "{} tune jobs are queued or running, the most this server takes \
                     (max_tune_jobs + max_queued_tune_jobs); retry later",
                    live.len()
                )));
            }
            live.insert(record.job.clone(), job.clone());
        }
        // Recorded and started by a task of its own: a client that leaves while the record is
        // saved drops this request, and the job must neither stay in `live` without running nor
        // be lost once saved.
        let (recorded, saved) = tokio::sync::oneshot::channel();
        let (jobs, core, first) = (self.clone(), core.clone(), record.clone());
        let examples = order.train.len();
        tokio::spawn(async move {
            if let Err(error) = save(&core.store, first.clone()).await {
                jobs.live().remove(&first.job);
                let _ = recorded.send(Err(error));
                return;
            }
            job.recorded.store(true, Ordering::SeqCst);
            jobs.count(JobState::Queued, 1);
            tracing::info!(job = %first.job, task = %first.task, examples, "tune job queued");
            let _ = recorded.send(Ok(()));
            jobs.run(core, job, order, expect).await
        });
        saved
            .await
            .map_err(|_| ApiError::Internal("the tune job's task ended unsaved".into()))??;
        Ok(record)
    }

    /// The job `id`: live from memory, else as the store recorded it.
    pub async fn get(&self, store: &Arc<TaskStore>, id: &str) -> Result<JobRecord, ApiError> {
        if let Some(job) = self.live().get(id) {
            return Ok(job.record().clone());
        }
        self.get_stored(store, id)
            .await?
            .ok_or_else(|| ApiError::JobNotFound(id.chars().take(160).collect()))
    }

    /// Up to `limit` recorded jobs, newest first, after the job `after`; live ones as they are now.
    pub async fn page(
        &self,
        store: &Arc<TaskStore>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<JobRecord>, Option<String>), ApiError> {
        let store = store.clone();
        // An unknown cursor (a job that expired, say) reads as an empty last page.
        let mut page =
            blocking(move || Ok(store.with_db(|db| db.jobs(after.as_deref(), limit + 1))?)).await?;
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map(|j| j.job.clone()).unwrap_or_default()
        });
        let live = self.live();
        for record in &mut page {
            if let Some(job) = live.get(&record.job) {
                *record = job.record().clone();
            }
        }
        Ok((page, next))
    }

    /// Asks the job `id` to stop; a queued job ends at once, a running one at its next step.
    /// A job another replica runs is marked, and its owner stops it at its next heartbeat. A job
    /// that has ended is left as it is.
    pub async fn cancel(&self, store: &Arc<TaskStore>, id: &str) -> Result<JobRecord, ApiError> {
        if let Some(job) = self.live().get(id) {
            job.cancel();
            return Ok(job.record().clone());
        }
        let mut record = self.get(store, id).await?;
        if record.state.is_final() || record.cancel_requested {
            return Ok(record);
        }
        record.cancel_requested = true;
        save(store, record.clone()).await?;
        tracing::info!(job = id, owner = %record.owner, "tune job cancel asked of its replica");
        // As stored: the owner may have ended the job meanwhile, and then its record stays.
        self.get(store, id).await
    }

    /// Renews the leases of this replica's jobs every [`HEARTBEAT`], stops those whose cancel was
    /// asked on another replica, and fails jobs whose lease has expired; until shutdown.
    pub fn keep_leases(self: &Arc<Self>, store: Arc<TaskStore>) {
        let jobs = self.clone();
        tokio::spawn(async move {
            // The first tick is at once: leases that expired while no replica ran end at start.
            let mut ticks = tokio::time::interval(HEARTBEAT);
            while !jobs.stopping.load(Ordering::SeqCst) {
                ticks.tick().await;
                if let Err(error) = jobs.heartbeat(&store).await {
                    tracing::warn!(error = %error_chain(&error), "tune jobs: renewing leases");
                }
            }
        });
    }

    async fn heartbeat(&self, store: &Arc<TaskStore>) -> Result<(), ApiError> {
        let live: Vec<Arc<LiveJob>> = self.live().values().cloned().collect();
        for job in live {
            // One job's failure must not leave the others' leases to expire.
            if let Err(error) = self.renew(store, &job).await {
                tracing::warn!(error = %error_chain(&error), job = %job.record().job, "renewing a tune job's lease");
            }
        }
        self.expire(store).await
    }

    /// Renews one live job's lease, and stops it where the store says it should stop: a cancel
    /// asked on another replica, or a record that has ended there (its lease expired while this
    /// replica could not renew it; the ended record stands).
    async fn renew(&self, store: &Arc<TaskStore>, job: &LiveJob) -> Result<(), ApiError> {
        if !job.recorded.load(Ordering::SeqCst) {
            return Ok(());
        }
        let id = job.record().job.clone();
        let stored = self.get_stored(store, &id).await?;
        let asked = stored.as_ref().is_some_and(|r| r.cancel_requested);
        if asked || stored.as_ref().is_some_and(|r| r.state.is_final()) {
            job.cancel();
        }
        let record = {
            let mut record = job.record();
            record.heartbeat_ms = now_ms().max(record.heartbeat_ms);
            record.cancel_requested |= asked;
            record.clone()
        };
        save(store, record).await
    }

    /// Fails the queued or running jobs of any replica whose lease has expired.
    async fn expire(&self, store: &Arc<TaskStore>) -> Result<(), ApiError> {
        let reader = store.clone();
        let unfinished = blocking(move || Ok(reader.with_db(|db| db.unfinished_jobs())?)).await?;
        let deadline = now_ms() - LEASE.as_millis() as i64;
        for mut record in unfinished {
            if record.heartbeat_ms >= deadline || self.live().contains_key(&record.job) {
                continue;
            }
            tracing::warn!(job = %record.job, owner = %record.owner, "tune job lease expired");
            record.state = JobState::Failed;
            record.error = Some(format!(
                "{INTERRUPTED}: its replica {} stopped renewing the job's lease",
                record.owner
            ));
            if let Err(error) = save(store, record).await {
                tracing::warn!(error = %error_chain(&error), "failing a tune job whose lease expired");
            }
        }
        Ok(())
    }

    /// The job `id` as the store has it.
    async fn get_stored(
        &self,
        store: &Arc<TaskStore>,
        id: &str,
    ) -> Result<Option<JobRecord>, ApiError> {
        let (store, key) = (store.clone(), id.to_string());
        blocking(move || Ok(store.with_db(|db| db.job(&key))?)).await
    }

    /// Stops taking jobs, stops the running ones (each fails as `interrupted` at its next run)
    /// and waits up to `timeout` for them to record it.
    pub async fn shut_down(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.slots.close();
        let started = Instant::now();
        while !self.live().is_empty() && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a job from its slot to its record's last state.
    async fn run(
        self: Arc<Self>,
        core: Core,
        job: Arc<LiveJob>,
        order: TuneOrder,
        expect: Precondition,
    ) {
        // A cancelled job leaves the queue at once, without waiting for a slot.
        let permit = tokio::select! {
            permit = self.slots.clone().acquire_owned() => Some(permit),
            () = job.wake.notified() => None,
        };
        self.count(JobState::Queued, -1);
        let outcome = match permit {
            Some(Err(_)) => Err(INTERRUPTED.to_string()),
            None | Some(Ok(_)) if job.cancelled.load(Ordering::SeqCst) => {
                Err(CANCELLED.to_string())
            }
            None => Err("woken without a cancel. This is a bug.".to_string()),
            Some(Ok(permit)) => {
                let started = Instant::now();
                self.mark_running(&core, &job).await;
                let outcome = self.tune_and_serve(&core, &job, order, expect).await;
                self.metrics
                    .tune_duration
                    .observe(started.elapsed().as_secs_f64());
                self.count(JobState::Running, -1);
                drop(permit);
                outcome
            }
        };
        self.finish(&core, &job, outcome).await;
    }

    async fn mark_running(&self, core: &Core, job: &LiveJob) {
        let record = {
            let mut record = job.record();
            record.state = JobState::Running;
            record.heartbeat_ms = now_ms().max(record.heartbeat_ms);
            record.clone()
        };
        self.count(JobState::Running, 1);
        tracing::info!(job = %record.job, task = %record.task, "tune job running");
        if let Err(error) = save(&core.store, record).await {
            tracing::warn!(error = %error_chain(&error), "recording a running tune job");
        }
    }

    /// Tunes on a thread of its own, then serves the task; the result or why it failed.
    async fn tune_and_serve(
        self: &Arc<Self>,
        core: &Core,
        job: &Arc<LiveJob>,
        order: TuneOrder,
        expect: Precondition,
    ) -> Result<JobResult, String> {
        let (jobs, thread_core, thread_job) = (self.clone(), core.clone(), job.clone());
        let name = job.record().task.clone();
        let starts = order.starts.clone();
        let (done, tuned) = tokio::sync::oneshot::channel();
        // A thread of its own at the lowest CPU priority (the encoder's threads, made on the first
        // job's thread, inherit it): when predictions need the cores, the kernel gives them first.
        std::thread::Builder::new()
            .name("tune-job".into())
            .spawn(move || {
                lower_priority();
                let _ = done.send(jobs.tune(&thread_core, &thread_job, &name, order));
            })
            .map_err(|e| format!("starting the tune thread: {e}"))?;
        let tuned = tuned
            .await
            .map_err(|_| "the tune thread failed".to_string())?;
        let (task, tuned, has_test) = tuned.map_err(|e| {
            if self.stopping.load(Ordering::SeqCst) {
                INTERRUPTED.to_string()
            } else if job.cancelled.load(Ordering::SeqCst) {
                CANCELLED.to_string()
            } else {
                format!("tuning failed: {e:#}")
            }
        })?;
        // A cancel asked during the last evaluation or admission still holds: nothing is served.
        if job.cancelled.load(Ordering::SeqCst) {
            return Err(CANCELLED.to_string());
        }
        let stored = self.commit_patiently(core, job, task, expect).await?;
        self.metrics.tasks_registered.set(core.store.len() as i64);
        Ok(JobResult {
            generation: stored.generation,
            etag: stored.etag.clone(),
            det: tuned.det.to_string(),
            dev_accuracy: tuned.dev.accuracy,
            test_accuracy: has_test.then_some(tuned.test.accuracy),
            start: tuned.start_name(&starts, tuned.start),
            dev_by_start: tuned.dev_by_start(|i| tuned.start_name(&starts, i).unwrap_or_default()),
        })
    }

    /// Serves the tuned task. While the store is unavailable (a brief outage, or a lock held by a
    /// long import) it tries again, for up to [`COMMIT_PATIENCE`], so that minutes of tuning are
    /// not lost to seconds of store trouble; a cancel or a shutdown meanwhile ends it unserved,
    /// and so does a record the store holds as ended or asked to cancel (see [`Self::halted`]).
    async fn commit_patiently(
        &self,
        core: &Core,
        job: &LiveJob,
        task: Task,
        expect: Precondition,
    ) -> Result<Arc<StoredTask>, String> {
        let deadline = Instant::now() + COMMIT_PATIENCE;
        let mut wait = FIRST_RETRY;
        loop {
            if let Some(why) = self.halted(&core.store, job).await {
                return Err(why);
            }
            let (serving, task, expect) = (core.clone(), task.clone(), expect.clone());
            let why = match blocking(move || commit(&serving, task, &expect)).await {
                Ok((stored, _)) => return Ok(stored),
                Err(ApiError::StoreUnavailable(why)) => why,
                Err(ApiError::EtagMismatch(why)) => {
                    return Err(format!("the task changed while the job ran: {why}"));
                }
                Err(ApiError::Internal(cause)) => {
                    let error = error_chain(cause.as_ref());
                    tracing::error!(%error, job = %job.record().job, "serving a tuned task");
                    return Err(
                        "serving the task failed: internal error; see the server log".into(),
                    );
                }
                Err(other) => return Err(format!("serving the task failed: {other}")),
            };
            if self.stopping.load(Ordering::SeqCst) {
                return Err(INTERRUPTED.to_string());
            }
            if job.cancelled.load(Ordering::SeqCst) {
                return Err(CANCELLED.to_string());
            }
            if Instant::now() + wait > deadline {
                return Err(format!(
                    "serving the task failed: the task store is unavailable ({why})"
                ));
            }
            tracing::warn!(job = %job.record().job, reason = %why, retry_in = ?wait, "serving a tuned task");
            self.metrics.tune_commit_retries.inc();
            tokio::time::sleep(wait).await;
            wait = next_retry(wait);
        }
    }

    /// Why the job must not serve its task, as the store has its record: ended (another replica
    /// failed it when its lease expired, while this one could not renew it) or a cancel asked on
    /// another replica since the last heartbeat. None when the store cannot say (the commit that
    /// follows will find it unavailable too).
    async fn halted(&self, store: &Arc<TaskStore>, job: &LiveJob) -> Option<String> {
        let id = job.record().job.clone();
        let stored = self.get_stored(store, &id).await.ok().flatten()?;
        if stored.state.is_final() {
            // Its words, so that the job reads the same before and after its record is stored.
            return Some((stored.error).unwrap_or_else(|| stored.state.name().to_string()));
        }
        stored.cancel_requested.then(|| CANCELLED.to_string())
    }

    /// Stage 2 for one job, blocking: the admitted task, what tuning found, and whether it was
    /// scored on test examples.
    fn tune(
        &self,
        core: &Core,
        job: &Arc<LiveJob>,
        name: &str,
        order: TuneOrder,
    ) -> anyhow::Result<(Task, Tuned, bool)> {
        let encoder = self.encoder(core)?;
        let has_test = !order.test.is_empty();
        let data = TaskData::from_examples(
            name,
            order.labels.clone(),
            order.train,
            order.dev,
            order.test,
            order.seed,
        );
        // Its own encoder embeds the labels for the prototypes' start (a few labels: milliseconds
        // against minutes of tuning); the commit finds or makes the served set apart.
        let descriptions = Classes::descriptions(embed_labels(&data.labels, &encoder)?);
        core.store.label_sets().count_embedded();
        let tasks = [TrainTask { data, descriptions }];
        let schedule = Schedule {
            steps: order.steps,
            patience: order.patience,
            ..TUNING
        };
        let options = FitOptions {
            max_seconds: Some(order.seconds),
            run_rows: self.limits.run_rows.max(1),
            ..FitOptions::new(schedule, order.seed)
        };
        let one = order.det.map(|det| [det]);
        let target = Target {
            dets: one.as_ref().map_or(&DetKind::ALL[..], |d| &d[..]),
            starts: &order.starts,
            ..Target::DEFAULT
        };
        let started = Instant::now();
        let mut best_dev: Option<f32> = None;
        let mut watch = |report: StepReport<'_>| -> anyhow::Result<()> {
            if job.cancelled.load(Ordering::SeqCst) {
                anyhow::bail!(CANCELLED);
            }
            // A unit never scored (stopped before its first evaluation) shows n 0.
            let scored = (report.dev.into_iter().flatten()).filter(|s| s.n > 0);
            if let Some(best) = scored.map(|s| s.accuracy).reduce(f32::max) {
                best_dev = Some(best_dev.map_or(best, |b| b.max(best)));
            }
            if report.loss.is_some() {
                self.metrics.tune_steps.inc();
            }
            let record = progress(job, &report, best_dev, started, order.seconds);
            // Progress is informational (and heartbeats save it again): a store that fails now
            // must not end a job that can still serve its task.
            if report.dev.is_some()
                && let Err(error) = core.store.with_db(|db| db.save_job(&record))
            {
                tracing::warn!(error = %error_chain(&error), job = %record.job, "recording a tune job's progress");
            }
            Ok(())
        };
        let subspace = &core.subspace;
        let tuned = tune_gradient(
            &encoder,
            subspace,
            &tasks,
            target,
            &options,
            None,
            Some(&mut watch),
        )?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("stage 2 returned no task. This is a bug."))?;
        let task = Task {
            name: name.to_string(),
            det: tuned.det,
            z: tuned.z.clone(),
            labels: order.labels,
            head: tuned.head.clone(),
            subspace: Some(subspace.id()),
        };
        let task = admit(task, core.encoder.manifest(), subspace, &self.task_limits)?;
        Ok((task, tuned, has_test))
    }

    /// The jobs' encoder, loaded on first use and paced behind predictions.
    fn encoder(&self, core: &Core) -> anyhow::Result<Arc<Encoder>> {
        let mut slot = self.encoder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(encoder) = slot.as_ref() {
            return Ok(encoder.clone());
        }
        let options = EncoderOptions {
            sessions: 1,
            with_grad: true,
            ..EncoderOptions::default()
        };
        let (batcher, stopping) = (core.batcher.clone(), self.stopping.clone());
        let pace: Pace = Arc::new(move || {
            let waiting = Instant::now();
            while !batcher.idle() && waiting.elapsed() < MAX_YIELD {
                std::thread::sleep(Duration::from_millis(2));
            }
            match stopping.load(Ordering::SeqCst) {
                true => Err(INTERRUPTED.to_string()),
                false => Ok(()),
            }
        });
        // Pools of its own: this thread is niced, and the sessions' threads, made here, inherit it.
        let runtime = core.runtime.independent();
        let encoder = Encoder::load(&runtime, core.encoder.dir(), &options)?.paced(pace);
        tracing::info!("tune jobs' encoder loaded (serving and gradient graphs)");
        Ok(slot.insert(Arc::new(encoder)).clone())
    }

    /// Records how a job ended, and forgets it as live.
    async fn finish(&self, core: &Core, job: &LiveJob, outcome: Result<JobResult, String>) {
        let record = {
            let mut record = job.record();
            match outcome {
                Ok(result) => {
                    record.state = JobState::Succeeded;
                    record.dev_accuracy = Some(result.dev_accuracy);
                    record.result = Some(result);
                }
                Err(reason) if reason == CANCELLED => {
                    record.state = JobState::Cancelled;
                    record.error = Some("cancelled by DELETE /v1/jobs/{id}".into());
                }
                Err(reason) => {
                    record.state = JobState::Failed;
                    record.error = Some(reason);
                }
            }
            record.eta_s = None;
            record.clone()
        };
        let result = record.state.name();
        self.metrics
            .tune_jobs_total
            .with_label_values(&[result])
            .inc();
        match &record.error {
            None => {
                tracing::info!(job = %record.job, task = %record.task, result, "tune job ended")
            }
            Some(error) => {
                tracing::warn!(job = %record.job, task = %record.task, result, %error, "tune job ended")
            }
        }
        self.save_end(core, record.clone()).await;
        self.live().remove(&record.job);
    }

    /// Saves a job's last record, retrying while the store fails: until it is stored the job
    /// stays live, so heartbeats keep its lease (and save its record too), and no replica fails
    /// as interrupted a job whose task is served. On shutdown it gives up and logs why.
    async fn save_end(&self, core: &Core, record: JobRecord) {
        let mut wait = FIRST_RETRY;
        loop {
            let Err(error) = save(&core.store, record.clone()).await else {
                return;
            };
            if self.stopping.load(Ordering::SeqCst) {
                tracing::error!(error = %error_chain(&error), job = %record.job, "recording the end of a tune job");
                return;
            }
            tracing::warn!(error = %error_chain(&error), job = %record.job, retry_in = ?wait, "recording the end of a tune job");
            tokio::time::sleep(wait).await;
            wait = next_retry(wait);
        }
    }

    fn count(&self, state: JobState, by: i64) {
        self.metrics
            .tune_jobs
            .with_label_values(&[state.name()])
            .add(by);
    }

    /// The names this replica's queued and running jobs will create: not served now.
    pub fn creating(&self, store: &TaskStore) -> HashSet<String> {
        let live = self.live();
        let tasks = live.values().map(|job| job.record().task.clone());
        tasks.filter(|name| store.get(name).is_none()).collect()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveJob>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Updates a running job's record from a step report; returns the record as it now is.
fn progress(
    job: &LiveJob,
    report: &StepReport<'_>,
    best_dev: Option<f32>,
    started: Instant,
    seconds: f64,
) -> JobRecord {
    let mut record = job.record();
    let elapsed = started.elapsed().as_secs_f64();
    record.step = report.step;
    record.heartbeat_ms = now_ms().max(record.heartbeat_ms);
    record.loss = report.loss.or(record.loss);
    record.dev_accuracy = best_dev;
    record.elapsed_s = elapsed;
    record.eta_s = (report.step > 0).then(|| {
        let by_steps = elapsed / report.step as f64 * (record.steps - report.step) as f64;
        by_steps.min((seconds - elapsed).max(0.0))
    });
    record.clone()
}

/// Gives the calling thread the lowest CPU priority (nice 19), so that a job takes only the CPU
/// that predictions leave; threads it starts inherit it. Linux sets it per thread.
fn lower_priority() {
    // SAFETY: setpriority reads no memory of ours; `0` names the calling thread.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0;
    if failed {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "tune job: could not lower the thread's priority");
    }
}

/// Records `job` in the store.
async fn save(store: &Arc<TaskStore>, job: JobRecord) -> Result<(), ApiError> {
    let store = store.clone();
    blocking(move || Ok(store.with_db(|db| db.save_job(&job))?)).await
}

/// A job id: 16 random hex digits, unique across replicas that share a store.
fn new_job_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
