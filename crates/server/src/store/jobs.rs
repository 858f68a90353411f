//! Tune jobs as the store keeps them: one [`JobRecord`] per job, written when the job is accepted,
//! at each of its evaluations and when it ends, so that `GET /v1/jobs/{id}` answers after a
//! restart and a job that a restart cut short is marked failed rather than left running.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name in the API, the database and metrics.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True once the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a job that succeeded made: the task it served, as `PUT` reports it, and its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub generation: u64,
    pub etag: String,
    /// The DET z was tuned through (the best on dev when the request named none).
    pub det: String,
    pub dev_accuracy: f32,
    /// Only when the request gave `test_examples`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f32>,
    /// Where the kept z started: "normal", or "upstream:TASK" (records from before starts: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The best dev accuracy from each start tuned, by the start's name (records from before
    /// starts: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dev_by_start: BTreeMap<String, f32>,
}

/// A job as `GET /v1/jobs/{id}` shows it and the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: String,
    pub task: String,
    pub state: JobState,
    /// Optimizer steps done, of at most `steps`.
    pub step: usize,
    pub steps: usize,
    /// The last step's mean training loss.
    pub loss: Option<f32>,
    /// The best dev accuracy so far (over the DETs tuned).
    pub dev_accuracy: Option<f32>,
    /// Seconds since the job started running (0 while queued).
    pub elapsed_s: f64,
    /// Seconds left at the current pace, if the step budget is what ends the job.
    pub eta_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    pub created_at_ms: i64,
    /// The replica that runs the job (`[server] replica`); only it may end the job.
    pub owner: String,
    /// When the owner last renewed the job's lease (records from before leases: 0). A queued
    /// or running job whose lease has expired is failed by whichever replica notices.
    #[serde(default)]
    pub heartbeat_ms: i64,
    /// Set by `DELETE /v1/jobs/{id}` on a replica that does not run the job; the owner stops it
    /// when it next renews the lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A job just accepted.
    pub fn queued(job: String, task: String, steps: usize, owner: String, now_ms: i64) -> Self {
        Self {
            job,
            task,
            state: JobState::Queued,
            step: 0,
            steps,
            loss: None,
            dev_accuracy: None,
            elapsed_s: 0.0,
            eta_s: None,
            error: None,
            result: None,
            created_at_ms: now_ms,
            owner,
            heartbeat_ms: now_ms,
            cancel_requested: false,
        }
    }

    /// What saving `self` leaves in the store where `stored` is recorded: nothing changes once
    /// the stored job has ended (`None`), and a cancel asked stays asked. Replicas save their own
    /// copies of a record (its owner at every evaluation and heartbeat, another replica on
    /// `DELETE` or when the lease has expired), so neither may undo what the other wrote. A copy
    /// read before the stored heartbeat is out of date: as an end it is refused (the owner
    /// renewed the lease after another replica read it as expired, so the job lives), and
    /// otherwise it adds only its cancel, so a `DELETE` on another replica never takes back the
    /// owner's progress or its lease. (The owner's own copy always carries its latest
    /// heartbeat, so it is never out of date.)
    pub fn saved_over(&self, stored: Option<&JobRecord>) -> Option<JobRecord> {
        match stored {
            Some(stored) if stored.state.is_final() => None,
            Some(stored) if self.heartbeat_ms < stored.heartbeat_ms => (!self.state.is_final())
                .then(|| JobRecord {
                    cancel_requested: self.cancel_requested || stored.cancel_requested,
                    ..stored.clone()
                }),
            Some(stored) => Some(JobRecord {
                cancel_requested: self.cancel_requested || stored.cancel_requested,
                ..self.clone()
            }),
            None => Some(self.clone()),
        }
    }
}
