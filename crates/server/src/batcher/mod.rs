//! The dynamic batcher: requests of any tasks and DETs wait in one bounded queue and run together,
//! one encoder call per batch (each row carries its own z and DET selector). The rule that cuts a
//! batch is the pure [`take_batch`]; the loop around it waits for a free session, then for a full
//! batch or the oldest request's deadline, and skips requests whose client has gone. A request
//! whose client has gone gives its place in the queue back at once, before the batcher sees it.

mod policy;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::{Array2, s};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::metrics::Metrics;
use deltaspace_core::classifier::{ClassifyError, Code};
use deltaspace_core::det::DetKind;
use deltaspace_core::model::Tokens;
use policy::is_full;
pub use policy::{BatchLimits, Cost, take_batch};

/// Why a request got no embeddings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("the queue is full")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The batch's encoder run failed; every request of the batch gets the same cause.
    #[error("inference failed")]
    Inference(#[source] Arc<ClassifyError>),
    /// The run returned another number of embeddings than the batch had rows.
    #[error("the encoder run gave {got} embeddings for {rows} rows")]
    WrongRows { got: usize, rows: usize },
    /// The batch went down with its thread before answering.
    #[error("the batch was lost")]
    Lost,
}

/// One request's rows: its texts, tokenized once (by the handler, which sized the request with
/// them), decoded with one z through one DET.
#[derive(Debug)]
pub struct Job {
    /// The task's name, for logs and the per-batch task count.
    pub task: Arc<str>,
    pub tokens: Tokens,
    pub z: Arc<[f32]>,
    pub det: DetKind,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Array2<f32>, BatchError>>,
    place: Place,
}

/// A request's place in the queue (one of `queue_capacity`), given back when the request is cut
/// into a batch or its client leaves, whichever comes first: a request whose client left holds no
/// place while it waits to be noticed.
#[derive(Debug, Clone)]
struct Place(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Place {
    fn give_back(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Gives a request's place back when its future ends, however it ends.
struct Holding(Place);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

impl Job {
    fn cost(&self) -> Cost {
        Cost {
            rows: self.tokens.rows(),
            seq_len: self.tokens.seq_len(),
        }
    }
}

/// Runs one batch through the model, each row with its code: embeddings [rows, H].
pub type Runner =
    Arc<dyn Fn(&Tokens, &[Code<'_>]) -> Result<Array2<f32>, ClassifyError> + Send + Sync>;

/// The handlers' side of the batcher: submit rows, await their embeddings.
#[derive(Clone)]
pub struct BatcherHandle {
    /// Requests on their way to the batcher, which reads them as they come, also while every
    /// session is busy. Its bound, twice `queue_capacity`, only bounds memory: `places` bounds
    /// the requests that wait.
    queue: mpsc::Sender<Job>,
    /// One permit per place in the queue (`queue_capacity`), held by requests whose clients
    /// still wait, until they are cut into a batch.
    places: Arc<Semaphore>,
    stop: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Requests submitted and not yet answered (queued or running): background work (tune jobs)
    /// waits for none before each of its runs.
    in_flight: Arc<AtomicUsize>,
    /// One permit per session: the batcher takes one for each batch it runs, a
    /// [`SessionLoan`] one for work outside it.
    sessions: Arc<Semaphore>,
    /// One permit: the loans made one at a time.
    lending: Arc<Semaphore>,
}

/// A session lent to work outside the batcher until dropped (see [`BatcherHandle::lend_session`]).
pub struct SessionLoan {
    // Dropped in this order: the session first, then the right to the next loan.
    _session: OwnedSemaphorePermit,
    _lending: OwnedSemaphorePermit,
}

/// Counts a request in flight until dropped, however its future ends.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BatcherHandle {
    /// Queues tokenized texts (decoded with `z` through `det`) and waits for their embeddings
    /// [rows, H]. Refuses at once when the queue is full; dropping the future withdraws the
    /// request.
    pub async fn embed(
        &self,
        task: Arc<str>,
        tokens: Tokens,
        z: Arc<[f32]>,
        det: DetKind,
    ) -> Result<Array2<f32>, BatchError> {
        let _in_flight = InFlight::new(&self.in_flight);
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            self.metrics.dropped("queue_full");
            return Err(BatchError::QueueFull);
        };
        let place = Place(Arc::new(Mutex::new(Some(place))));
        let _holding = Holding(place.clone());
        let (reply, answer) = oneshot::channel();
        let job = Job {
            task,
            tokens,
            z,
            det,
            enqueued: Instant::now(),
            reply,
            place,
        };
        // Counted before it is sent: once sent, the batcher may take it (and count it out) at once.
        self.metrics.queue_requests.inc();
        if let Err(refused) = self.queue.try_send(job) {
            self.metrics.queue_requests.dec();
            return Err(match refused {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics.dropped("queue_full");
                    BatchError::QueueFull
                }
                mpsc::error::TrySendError::Closed(_) => BatchError::ShuttingDown,
            });
        }
        answer.await.unwrap_or_else(|_| Err(BatchError::Lost))
    }

    /// Lends one of the batcher's sessions to work that runs the serving model outside it
    /// (embedding a chunk of a new task's label descriptions), waiting until one is free; the
    /// batcher cuts no batch into it until the loan is dropped. Loans are made one at a time and
    /// the permits are handed out in order, so a burst of uploads takes at most one session's
    /// turns from predictions instead of queueing ahead of them. None outside a tokio runtime,
    /// where no batcher runs.
    ///
    /// # Panics
    ///
    /// On an async worker thread (tokio's `block_on` cannot nest): call it where blocking is
    /// allowed, as the uploads (`web::block`) and the follower (`spawn_blocking`) do.
    pub fn lend_session(&self) -> Option<SessionLoan> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (lending, sessions) = (self.lending.clone(), self.sessions.clone());
        runtime.block_on(async move {
            let lending = lending.acquire_owned().await.ok()?;
            let session = sessions.acquire_owned().await.ok()?;
            Some(SessionLoan {
                _session: session,
                _lending: lending,
            })
        })
    }

    /// True when no request is queued or running.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Stops taking requests; those already queued still run. The batcher task then ends.
    pub fn close(&self) {
        self.stop.notify_one();
    }
}

/// Starts the batcher on the current tokio runtime; await the handle to know it has drained.
pub fn spawn(
    limits: BatchLimits,
    runner: Runner,
    metrics: Arc<Metrics>,
) -> (BatcherHandle, tokio::task::JoinHandle<()>) {
    let places = limits.queue_capacity.max(1);
    let (queue, receiver) = mpsc::channel(2 * places);
    let stop = Arc::new(Notify::new());
    let sessions = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let handle = BatcherHandle {
        queue,
        places: Arc::new(Semaphore::new(places)),
        stop: stop.clone(),
        metrics: metrics.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        sessions: sessions.clone(),
        lending: Arc::new(Semaphore::new(1)),
    };
    let batcher = Batcher {
        limits,
        runner,
        metrics,
        receiver,
        stop,
        stopping: false,
        pending: VecDeque::new(),
        sessions,
    };
    (handle, tokio::spawn(batcher.run()))
}

struct Batcher {
    limits: BatchLimits,
    runner: Runner,
    metrics: Arc<Metrics>,
    receiver: mpsc::Receiver<Job>,
    stop: Arc<Notify>,
    /// Set once `close` was called: the queue is closed and no deadline is waited for.
    stopping: bool,
    /// Requests taken off the channel but not yet batched (at most `queue_capacity` whose
    /// clients still wait: each holds its place).
    pending: VecDeque<Job>,
    /// One permit per session, shared with the handle's loans.
    sessions: Arc<Semaphore>,
}

impl Batcher {
    async fn run(mut self) {
        // One permit per session, taken once a batch is worth running and before it is cut: a batch
        // is cut only when a session is free (not running a batch, not lent out), so requests that
        // arrive while every session is busy join the next batch instead of waiting behind it. An
        // idle batcher holds no permit, so a loan never waits for a request to come.
        let sessions = self.sessions.clone();
        loop {
            if !self.gather().await {
                break;
            }
            let Some(permit) = self.wait_for_session().await else {
                break;
            };
            // A client may have left while the batch waited for its deadline or a session; the
            // room they leave is filled from the queue, so a session runs a batch of live requests.
            self.drop_abandoned();
            self.take_arrived();
            if self.pending.is_empty() {
                continue;
            }
            let count = take_batch(self.pending.iter().map(Job::cost), &self.limits);
            let batch: Vec<Job> = self.pending.drain(..count).collect();
            for job in &batch {
                job.place.give_back();
            }
            self.metrics.queue_requests.sub(batch.len() as i64);
            let runner = self.runner.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                run_batch(batch, runner, metrics).await;
                drop(permit);
            });
        }
        // Wait for the batches still running: their permits come back when they finish.
        let all = u32::try_from(self.limits.concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = sessions.acquire_many(all).await;
        tracing::debug!("batcher drained");
    }

    /// Waits until `pending` holds a batch worth running: full, or its oldest request's wait is
    /// over, or the batcher is stopping. False when there is nothing left and nothing will come.
    async fn gather(&mut self) -> bool {
        loop {
            self.drop_abandoned();
            if self.pending.is_empty() {
                match self.next_job().await {
                    Some(job) => self.keep_live(job),
                    None => return false,
                }
                continue;
            }
            self.take_arrived();
            let deadline = self.pending[0].enqueued + self.limits.max_wait;
            if self.stopping || self.full() || Instant::now() >= deadline {
                return true;
            }
            let arrived = tokio::select! {
                job = self.next_job() => job,
                () = tokio::time::sleep_until(deadline) => None,
            };
            match arrived {
                Some(job) => self.keep_live(job),
                None => return true,
            }
        }
    }

    /// Waits for a free session, reading the queue meanwhile: requests whose clients left are
    /// forgotten as they come, the others wait in `pending` (they hold their places, so at most
    /// `queue_capacity` of them). The wait keeps its turn for the session while requests come.
    async fn wait_for_session(&mut self) -> Option<OwnedSemaphorePermit> {
        let session = self.sessions.clone().acquire_owned();
        tokio::pin!(session);
        let mut open = true;
        loop {
            tokio::select! {
                permit = &mut session => return permit.ok(),
                job = self.receiver.recv(), if open => match job {
                    Some(job) => self.keep_live(job),
                    None => open = false,
                },
            }
        }
    }

    /// Moves requests already queued into `pending`, up to a full batch of live ones.
    fn take_arrived(&mut self) {
        while !self.full() {
            match self.receiver.try_recv() {
                Ok(job) => self.keep_live(job),
                Err(_) => break,
            }
        }
    }

    /// Keeps a request taken off the queue, unless its client has left: then it is forgotten at
    /// once, not counted against a batch.
    fn keep_live(&mut self, job: Job) {
        if job.reply.is_closed() {
            self.forget_abandoned(1);
        } else {
            self.pending.push_back(job);
        }
    }

    /// The next queued request; after `close`, the ones still queued, then `None`.
    async fn next_job(&mut self) -> Option<Job> {
        if !self.stopping {
            let stop = self.stop.clone();
            tokio::select! {
                job = self.receiver.recv() => return job,
                () = stop.notified() => {}
            }
            self.stopping = true;
            self.receiver.close();
        }
        self.receiver.recv().await
    }

    fn full(&self) -> bool {
        is_full(self.pending.iter().map(Job::cost), &self.limits)
    }

    /// Forgets requests whose caller stopped waiting (the client disconnected).
    fn drop_abandoned(&mut self) {
        let before = self.pending.len();
        self.pending.retain(|job| !job.reply.is_closed());
        self.forget_abandoned(before - self.pending.len());
    }

    /// Counts `gone` requests out of the queue, as dropped because their client left.
    fn forget_abandoned(&self, gone: usize) {
        if gone > 0 {
            self.metrics.queue_requests.sub(gone as i64);
            for _ in 0..gone {
                self.metrics.dropped("client_gone");
            }
        }
    }
}

/// Runs one batch on a blocking thread and answers each request with its rows.
async fn run_batch(batch: Vec<Job>, runner: Runner, metrics: Arc<Metrics>) {
    let started = Instant::now();
    let rows: usize = batch.iter().map(|job| job.tokens.rows()).sum();
    let seq_len = batch
        .iter()
        .map(|job| job.tokens.seq_len())
        .max()
        .unwrap_or(0);
    let mut tasks: Vec<&str> = batch.iter().map(|job| &*job.task).collect();
    tasks.sort_unstable();
    tasks.dedup();
    metrics.observe_batch(rows, rows * seq_len, tasks.len());
    for job in &batch {
        metrics
            .queue_duration
            .observe((started - job.enqueued).as_secs_f64());
        metrics.rows_by_det(job.det, job.tokens.rows());
    }
    let span = tracing::debug_span!("batch", rows, tokens = rows * seq_len, tasks = tasks.len());
    drop(tasks);
    let (batch, result) = match tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let result = {
            let parts: Vec<&Tokens> = batch.iter().map(|job| &job.tokens).collect();
            let codes: Vec<Code<'_>> = batch
                .iter()
                .flat_map(|job| std::iter::repeat_n((&job.z[..], job.det), job.tokens.rows()))
                .collect();
            runner(&Tokens::concat(&parts), &codes)
        };
        (batch, result)
    })
    .await
    {
        Ok(done) => done,
        Err(error) => {
            // The jobs went down with the thread; their callers see a lost batch.
            tracing::error!(%error, rows, "batch thread failed");
            return;
        }
    };
    metrics
        .inference_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(embeddings) if embeddings.nrows() == rows => {
            let mut start = 0;
            for job in batch {
                let end = start + job.tokens.rows();
                let _ = job
                    .reply
                    .send(Ok(embeddings.slice(s![start..end, ..]).to_owned()));
                start = end;
            }
        }
        Ok(embeddings) => {
            let got = embeddings.nrows();
            fail(batch, BatchError::WrongRows { got, rows })
        }
        Err(error) => fail(batch, BatchError::Inference(Arc::new(error))),
    }
}

/// Answers every request of `batch` with `error`, logged once with its causes.
fn fail(batch: Vec<Job>, error: BatchError) {
    let chain = crate::store::error_chain(&error);
    tracing::error!(error = %chain, rows = batch.len(), "batch failed");
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use futures::FutureExt;

    use super::policy::tests::limits;
    use super::*;
    use deltaspace_core::model::ModelError;

    /// A runner that records each batch's row count and returns zeros.
    fn recording_runner() -> (Runner, Arc<Mutex<Vec<usize>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let runner: Runner = Arc::new(move |tokens: &Tokens, codes: &[Code<'_>]| {
            log.lock().unwrap().push(tokens.rows());
            Ok(Array2::from_shape_fn((codes.len(), 2), |(r, _)| {
                codes[r].0[0]
            }))
        });
        (runner, seen)
    }

    /// `rows` texts of 4 tokens, as a tokenizer would give them.
    fn tokens(rows: usize) -> Tokens {
        Tokens {
            input_ids: Array2::ones((rows, 4)),
            attention_mask: Array2::ones((rows, 4)),
            token_type_ids: Array2::zeros((rows, 4)),
        }
    }

    fn submit(
        handle: &BatcherHandle,
        z: f32,
        rows: usize,
    ) -> tokio::task::JoinHandle<Result<Array2<f32>, BatchError>> {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .embed("t".into(), tokens(rows), vec![z].into(), DetKind::Lora)
                .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_max_wait_then_runs() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let (handle, _task) = spawn(limits(8, 10_000), runner, metrics);
        let answer = submit(&handle, 1.0, 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(seen.lock().unwrap().is_empty(), "ran before max_wait");
        let rows = answer.await.unwrap().unwrap();
        assert_eq!(rows.nrows(), 1);
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_max_wait_share_one_batch_and_get_their_own_rows() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let (handle, _task) = spawn(limits(8, 10_000), runner, metrics);
        let first = submit(&handle, 1.0, 2);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = submit(&handle, 2.0, 3);
        let (first, second) = (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        );
        assert_eq!(*seen.lock().unwrap(), vec![5]);
        assert_eq!(first.column(0).to_vec(), vec![1.0; 2]);
        assert_eq!(second.column(0).to_vec(), vec![2.0; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_run_answers_every_request_of_its_batch_with_its_cause() {
        let runner: Runner = Arc::new(|_: &Tokens, _: &[Code<'_>]| {
            Err(ModelError::Shape("three rows, two embeddings".into()).into())
        });
        let (handle, _task) = spawn(limits(8, 10_000), runner, Arc::new(Metrics::new()));
        let answers = [submit(&handle, 1.0, 2), submit(&handle, 2.0, 1)];
        for answer in answers {
            let error = answer.await.unwrap().unwrap_err();
            assert!(matches!(error, BatchError::Inference(_)), "{error:?}");
            let chain = crate::store::error_chain(&error);
            assert!(chain.contains("three rows, two embeddings"), "{chain}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_runs_without_waiting() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let (handle, _task) = spawn(limits(4, 10_000), runner, metrics);
        let start = Instant::now();
        let answer = submit(&handle, 1.0, 4);
        answer.await.unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_millis(100));
        assert_eq!(*seen.lock().unwrap(), vec![4]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_request_is_dropped_before_it_runs() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let (handle, _task) = spawn(limits(8, 10_000), runner, metrics.clone());
        let gone = submit(&handle, 1.0, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        let kept = submit(&handle, 2.0, 1);
        kept.await.unwrap().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1]);
        assert_eq!(metrics.dropped_count("client_gone"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_abandoned_while_its_batch_waits_never_runs() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let (handle, _task) = spawn(limits(8, 10_000), runner, metrics.clone());
        let gone = submit(&handle, 1.0, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(metrics.dropped_count("client_gone"), 1);
        assert_eq!(metrics.queue_requests.get(), 0);
    }

    /// Holds a gated runner's batches until opened, or dropped (a failing test then ends rather
    /// than waiting on its blocked batch).
    struct Gate(Arc<(Mutex<bool>, Condvar)>);

    impl Gate {
        fn open(&self) {
            *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.0.1.notify_all();
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.open();
        }
    }

    /// A runner that records each batch's row count and holds every batch until the gate opens:
    /// its session stays busy meanwhile.
    fn gated_runner() -> (Runner, Arc<Mutex<Vec<usize>>>, Gate) {
        let (inner, seen) = recording_runner();
        let gate = Gate(Arc::new((Mutex::new(false), Condvar::new())));
        let held = gate.0.clone();
        let runner: Runner = Arc::new(move |tokens: &Tokens, codes: &[Code<'_>]| {
            let (open, opened) = &*held;
            drop(
                opened
                    .wait_while(open.lock().unwrap(), |open| !*open)
                    .unwrap(),
            );
            inner(tokens, codes)
        });
        (runner, seen, gate)
    }

    /// A batcher that cuts a batch as soon as a session is free (no wait), on a gated runner.
    fn gated_batcher(
        max_rows: usize,
        queue_capacity: usize,
    ) -> (BatcherHandle, Arc<Mutex<Vec<usize>>>, Gate, Arc<Metrics>) {
        let (runner, seen, gate) = gated_runner();
        let metrics = Arc::new(Metrics::new());
        let mut eager = limits(max_rows, 10_000);
        eager.max_wait = Duration::ZERO;
        eager.queue_capacity = queue_capacity;
        let (handle, _task) = spawn(eager, runner, metrics.clone());
        (handle, seen, gate, metrics)
    }

    /// A request sent to the batcher (its future polled once), still waiting for its answer.
    fn sent(
        handle: &BatcherHandle,
        z: f32,
        rows: usize,
    ) -> std::pin::Pin<Box<impl Future<Output = Result<Array2<f32>, BatchError>>>> {
        let mut answer =
            Box::pin(handle.embed("t".into(), tokens(rows), vec![z].into(), DetKind::Lora));
        assert!((&mut answer).now_or_never().is_none(), "answered at once");
        answer
    }

    /// A request whose client leaves as soon as it is sent.
    fn sent_and_left(handle: &BatcherHandle) -> Option<Result<Array2<f32>, BatchError>> {
        handle
            .embed("t".into(), tokens(1), vec![0.0].into(), DetKind::Lora)
            .now_or_never()
    }

    // These run on one thread: the batcher runs only where the test awaits, so each request is
    // sent (and left) whole before the batcher sees it.
    #[tokio::test]
    async fn requests_abandoned_while_every_session_is_busy_leave_room_for_live_ones() {
        let (handle, seen, gate, metrics) = gated_batcher(4, 16);
        let busy = sent(&handle, 9.0, 4);
        tokio::task::yield_now().await;
        // While that batch holds the one session: four requests whose clients wait, four that left.
        let mut live = Vec::new();
        for z in 0..4 {
            live.push(sent(&handle, z as f32, 1));
            assert!(sent_and_left(&handle).is_none());
        }
        tokio::task::yield_now().await;
        gate.open();
        busy.await.unwrap();
        for (z, answer) in live.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap().column(0).to_vec(), vec![z as f32]);
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![4, 4],
            "the four live requests in one batch"
        );
        assert_eq!(metrics.dropped_count("client_gone"), 4);
        assert_eq!(metrics.queue_requests.get(), 0);
    }

    #[tokio::test]
    async fn a_request_whose_client_left_gives_its_place_in_the_queue_back_at_once() {
        let (handle, seen, gate, metrics) = gated_batcher(2, 2);
        let busy = sent(&handle, 9.0, 2);
        tokio::task::yield_now().await;
        // The session is busy; one request waits, and a place is left.
        let waiting = sent(&handle, 1.0, 1);
        tokio::task::yield_now().await;
        // Clients that leave give their places back, more of them than the queue's channel holds
        // (twice queue_capacity): the batcher forgets them as they come.
        for _ in 0..10 {
            assert!(
                sent_and_left(&handle).is_none(),
                "refused: the place was not given back"
            );
            tokio::task::yield_now().await;
        }
        let last = sent(&handle, 2.0, 1);
        let refused = sent_and_left(&handle);
        assert!(
            matches!(refused, Some(Err(BatchError::QueueFull))),
            "{refused:?}"
        );
        gate.open();
        busy.await.unwrap();
        assert_eq!(waiting.await.unwrap().column(0).to_vec(), vec![1.0]);
        assert_eq!(last.await.unwrap().column(0).to_vec(), vec![2.0]);
        assert_eq!(*seen.lock().unwrap(), vec![2, 2]);
        assert_eq!(metrics.dropped_count("client_gone"), 10);
        assert_eq!(metrics.dropped_count("queue_full"), 1);
        assert_eq!(metrics.queue_requests.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_and_close_drains() {
        let (runner, seen) = recording_runner();
        let metrics = Arc::new(Metrics::new());
        let mut small = limits(1, 10_000);
        small.queue_capacity = 1;
        let (handle, task) = spawn(small, runner, metrics.clone());
        // Fill the channel faster than the batcher can take from it.
        let results = futures::future::join_all((0..6).map(|i| {
            let handle = handle.clone();
            async move {
                handle
                    .embed("t".into(), tokens(1), vec![i as f32].into(), DetKind::Lora)
                    .await
            }
        }))
        .await;
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(BatchError::QueueFull)))
        );
        assert!(results.iter().any(Result::is_ok));
        assert_eq!(
            metrics.queue_requests.get(),
            0,
            "refused requests are not counted"
        );
        handle.close();
        task.await.unwrap();
        assert!(!seen.lock().unwrap().is_empty());
        let late = handle
            .embed("t".into(), tokens(1), vec![0.0].into(), DetKind::Lora)
            .await;
        assert!(matches!(late, Err(BatchError::ShuttingDown)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_queue_gauge_never_reads_below_zero() {
        let metrics = Arc::new(Metrics::new());
        let lowest = Arc::new(Mutex::new(i64::MAX));
        let (gauge, low) = (metrics.clone(), lowest.clone());
        let runner: Runner = Arc::new(move |tokens: &Tokens, _: &[Code<'_>]| {
            let mut low = low.lock().unwrap();
            *low = (*low).min(gauge.queue_requests.get());
            Ok(Array2::zeros((tokens.rows(), 2)))
        });
        let mut eager = limits(1, 10_000);
        eager.max_wait = Duration::ZERO;
        eager.queue_capacity = 512;
        let (handle, _task) = spawn(eager, runner, metrics.clone());
        let answers: Vec<_> = (0..400).map(|i| submit(&handle, i as f32, 1)).collect();
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        assert!(
            *lowest.lock().unwrap() >= 0,
            "the gauge read {}",
            lowest.lock().unwrap()
        );
        assert_eq!(metrics.queue_requests.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lent_session_runs_no_batch_and_loans_come_one_at_a_time() {
        let (runner, seen) = recording_runner();
        let mut eager = limits(8, 10_000);
        eager.max_wait = Duration::ZERO;
        eager.concurrency = 2;
        let (handle, _task) = spawn(eager, runner, Arc::new(Metrics::new()));
        let lend = |handle: &BatcherHandle| {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || handle.lend_session().expect("a loan"))
        };
        let first = tokio::time::timeout(Duration::from_secs(10), lend(&handle))
            .await
            .expect("no session lent")
            .unwrap();
        // A second loan waits for the first, though a session is free; predictions do not.
        let second = lend(&handle);
        submit(&handle, 1.0, 1).await.unwrap().unwrap();
        assert!(!second.is_finished(), "two loans at once");
        drop(first);
        let second = second.await.unwrap();
        // With its one session lent, a batcher runs nothing until the loan ends.
        let mut eager = limits(8, 10_000);
        eager.max_wait = Duration::ZERO;
        let (single, _task) = spawn(eager, recording_runner().0, Arc::new(Metrics::new()));
        // An idle batcher holds no session: the loan comes at once, with no request to wait for.
        let loan = tokio::time::timeout(Duration::from_secs(10), lend(&single))
            .await
            .expect("an idle batcher kept its session")
            .unwrap();
        let waiting = submit(&single, 2.0, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a batch ran on the lent session");
        drop(loan);
        assert_eq!(
            waiting.await.unwrap().unwrap().column(0).to_vec(),
            vec![2.0]
        );
        drop(second);
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }
}
