//! Where stage 2 starts z: the paper's N(0, 0.02²), given values, or the code of the upstream task
//! whose label descriptions are nearest; and which starts `tune` takes by default.

use anyhow::Context;
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use sha2::{Digest, Sha256};

use crate::model::{Encoder, TextInput};
use crate::subspace::{Subspace, values_sha256};
use crate::tuning::batch::TrainTask;

use super::Target;

/// Where stage 2 starts z.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start<'a> {
    /// The paper's N(0, 0.02²), seeded per task.
    Normal,
    /// These values: another task's z (a warm start, such as an upstream task's code).
    Values(&'a [f32]),
    /// The code of the upstream task (among those the subspace carries) whose label descriptions
    /// are nearest to the task's: the largest cosine between the mean embeddings of the two
    /// tasks' descriptions (frozen model), the first of equals. A warm start from the nearest
    /// upstream task, chosen without a labelled example: a choice on a few-shot task's own
    /// examples is mostly their draw, and dev then judges the chosen start without bias when the
    /// target also tunes from [`Start::Normal`] (docs/RESULTS.md, "A warm start").
    Upstream,
}

impl Start<'static> {
    /// The start a word names, as `tune --init` and a tune job's `init` take them: "normal" or
    /// "upstream".
    pub fn named(word: &str) -> Option<Self> {
        match word {
            "normal" => Some(Start::Normal),
            "upstream" => Some(Start::Upstream),
            _ => None,
        }
    }
}

impl Start<'_> {
    /// The start's name in checkpoints: "normal", the values' digest, or "upstream by labels" and
    /// the digests of every code it chooses from and of their descriptions (a checkpoint from
    /// when the choice was made on examples, "upstream" or "upstream on train", is refused rather
    /// than resumed from another code).
    pub(super) fn name(&self, subspace: &Subspace) -> String {
        match self {
            Start::Normal => "normal".to_string(),
            Start::Values(values) => digest(values),
            Start::Upstream => {
                let codes = subspace.codes();
                let z = codes.map(|c| c.z.concat()).unwrap_or_default();
                let descriptions = codes.and_then(|c| c.descriptions.as_ref());
                let texts = serde_json::to_string(&descriptions).expect("texts serialize");
                let texts = format!("{:x}", Sha256::digest(texts.as_bytes()));
                format!("upstream by labels {}, labels {}", digest(&z), &texts[..12])
            }
        }
    }
}

/// The upstream code chosen for a task: the upstream task's name and the cosine between the two
/// tasks' mean label-description embeddings.
#[derive(Debug, Clone)]
pub struct UpstreamChoice {
    pub task: String,
    pub similarity: f32,
}

/// The paper's init for z: N(0, 0.02²), seeded per task.
pub(super) fn initial_z(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("finite std. This is a bug.");
    (0..d).map(|_| normal.sample(&mut rng)).collect()
}

/// A start's name in checkpoints: "z" and the first 12 hex digits of its values' SHA-256.
fn digest(values: &[f32]) -> String {
    format!("z {}", &values_sha256(values)[..12])
}

/// An upstream code chosen for a task, and why.
pub(super) struct UpstreamStart {
    pub(super) z: Vec<f32>,
    pub(super) choice: UpstreamChoice,
}

/// Per task, the code of the upstream task whose label descriptions are nearest to its own
/// ([`Start::Upstream`]).
pub(super) fn choose_upstream(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
) -> anyhow::Result<Vec<UpstreamStart>> {
    let codes = subspace
        .codes()
        .context("a start from upstream needs the subspace's upstream codes")?;
    let descriptions = codes
        .descriptions
        .as_ref()
        .context("a start from upstream needs the upstream tasks' label descriptions")?;
    let upstream = descriptions
        .iter()
        .map(|texts| {
            let inputs: Vec<TextInput> = texts.iter().cloned().map(TextInput::single).collect();
            Ok(mean_direction(&encoder.embed_frozen(&inputs)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("embedding the upstream tasks' label descriptions")?;
    let choose = |task: &TrainTask| {
        let own = mean_direction(&task.descriptions.prototypes);
        let cosines: Vec<f32> = upstream.iter().map(|u| u.dot(&own)).collect();
        // The first of equals, as everywhere a choice is made.
        let best = (0..cosines.len())
            .rev()
            .max_by(|&a, &b| cosines[a].total_cmp(&cosines[b]))
            .expect("a subspace's codes are never empty. This is a bug.");
        UpstreamStart {
            z: codes.z[best].clone(),
            choice: UpstreamChoice {
                task: codes.tasks[best].clone(),
                similarity: cosines[best],
            },
        }
    };
    Ok(tasks.iter().map(choose).collect())
}

/// The unit-norm mean of embeddings' rows (each unit-norm): a task's direction.
fn mean_direction(embeddings: &Array2<f32>) -> Array1<f32> {
    let mean = embeddings.mean_axis(Axis(0)).expect("a task has labels");
    let norm = mean.dot(&mean).sqrt().max(1e-12);
    mean / norm
}

/// Where z starts unless told otherwise (`tune` without `--init`, a tune job without `init`):
/// the guarded warm start, [`Start::Normal`] and [`Start::Upstream`], each task keeping the
/// better on dev, where `subspace` can choose an upstream code and z trains; [`Start::Normal`]
/// alone elsewhere (a random subspace, one without described codes, the head alone). At k = 16
/// the guarded start led the cold one by 2.6 points of mean test accuracy on the 5 unseen tasks
/// over 3 seeds, for twice the units (docs/RESULTS.md, "A warm start").
pub fn default_starts(subspace: &Subspace, train_z: bool) -> &'static [Start<'static>] {
    const GUARDED: &[Start<'static>] = &[Start::Normal, Start::Upstream];
    if train_z && upstream_unavailable(GUARDED, subspace).is_none() {
        GUARDED
    } else {
        &[Start::Normal]
    }
}

/// Why `starts` cannot start in `subspace`, if they cannot: [`Start::Upstream`] is among them and
/// the subspace carries no upstream codes, or none of their label descriptions.
pub fn upstream_unavailable(starts: &[Start<'_>], subspace: &Subspace) -> Option<String> {
    if !starts.contains(&Start::Upstream) {
        return None;
    }
    let id = subspace.id();
    match subspace.codes() {
        None => Some(format!(
            "subspace {id} carries no upstream codes to start from (a random subspace, or one made \
             before subspaces carried them: `deltaspace train subspace` makes it again with them)"
        )),
        Some(codes) if codes.descriptions.is_none() => Some(format!(
            "subspace {id} carries no label descriptions of its upstream tasks to choose a code by \
             (made before subspaces carried them: `deltaspace train subspace` with the flags that \
             made it and `--data-root DIR --steps 0` makes it again with them, and the same id)"
        )),
        Some(_) => None,
    }
}

/// Whether `target`'s starts can be tuned in `subspace`.
pub(super) fn check_starts(target: Target<'_>, subspace: &Subspace) -> anyhow::Result<()> {
    let (starts, d) = (target.starts, subspace.d());
    if let Some(reason) = upstream_unavailable(starts, subspace) {
        anyhow::bail!(reason);
    }
    anyhow::ensure!(!starts.is_empty(), "tune from at least one start");
    for (index, start) in starts.iter().enumerate() {
        anyhow::ensure!(
            !starts[..index].contains(start),
            "start {} repeats start {} (the same z)",
            index + 1,
            starts[..index]
                .iter()
                .position(|s| s == start)
                .map_or(0, |i| i + 1)
        );
        if let Start::Values(values) = start {
            anyhow::ensure!(
                values.len() == d,
                "a start for z needs d = {d} values; start {} has {}",
                index + 1,
                values.len()
            );
        }
    }
    anyhow::ensure!(
        target.train_z || starts == [Start::Normal],
        "a start for z needs z to train"
    );
    Ok(())
}
