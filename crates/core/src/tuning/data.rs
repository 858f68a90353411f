//! Task data on disk: `<task>/{train,dev,test}.jsonl` and `labels.json`, the format of the
//! project's data sets (one JSON object per line: {"text", "text_pair"?, "label"}).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::model::TextInput;
use crate::task::{Label, TaskLimits, validate_labels};

/// One labelled example: the text and the index of its label in `labels.json`.
#[derive(Debug, Clone)]
pub struct Example {
    pub input: TextInput,
    pub label: usize,
}

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "dev" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            other => Err(format!(
                "unknown split {other:?}: expected train, dev or test"
            )),
        }
    }
}

/// A task's labels and its three splits.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The directory name, e.g. `sst2`.
    pub name: String,
    pub dir: PathBuf,
    pub labels: Vec<Label>,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
}

#[derive(Deserialize)]
struct Line {
    text: String,
    #[serde(default)]
    text_pair: Option<String>,
    label: String,
}

impl TaskData {
    /// Reads a task directory. `max_per_split` caps each split (first lines; the files are
    /// already shuffled and stratified), so runs on 2 CPU cores stay short.
    pub fn load(dir: &Path, max_per_split: Option<usize>) -> anyhow::Result<Self> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no directory name", dir.display()))?
            .to_string();
        let labels_path = dir.join("labels.json");
        let text = std::fs::read_to_string(&labels_path)
            .with_context(|| format!("reading {}", labels_path.display()))?;
        let labels: Vec<Label> = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", labels_path.display()))?;
        // What any task needs (two or more labels, unique, described); the configured bounds on
        // their number and length apply where a task is written (`tune`, the server).
        let any_size = TaskLimits {
            max_labels: usize::MAX,
            max_label_chars: usize::MAX,
            ..TaskLimits::default()
        };
        validate_labels(&labels, &any_size)
            .with_context(|| format!("{}", labels_path.display()))?;
        let read =
            |split: Split| read_split(&dir.join(format!("{split}.jsonl")), &labels, max_per_split);
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            train: read(Split::Train)?,
            dev: read(Split::Dev)?,
            test: read(Split::Test)?,
            labels,
        })
    }

    /// A task from examples in memory (a server's tune job); `dir` stays empty. Without `dev`,
    /// [`held_out`] draws one from `train`. Without `test`, the test split is empty (its scores
    /// have n = 0).
    pub fn from_examples(
        name: &str,
        labels: Vec<Label>,
        train: Vec<Example>,
        dev: Option<Vec<Example>>,
        test: Vec<Example>,
        seed: u64,
    ) -> Self {
        let (train, dev) = match dev {
            Some(dev) => (train, dev),
            None => held_out(train, labels.len(), seed),
        };
        Self {
            name: name.to_string(),
            dir: PathBuf::new(),
            labels,
            train,
            dev,
            test,
        }
    }

    /// The few-shot version of the task: at most `per_label` examples of each label in train and
    /// in dev, drawn with `seed`; test stays whole. Every method compared on a task gets the same
    /// draw for the same seed.
    pub fn few_shot(mut self, per_label: usize, seed: u64) -> Self {
        let labels = self.labels.len();
        let draw = |examples: Vec<Example>, salt: u64| -> Vec<Example> {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ salt);
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut rng);
            let mut taken = vec![0usize; labels];
            let mut keep = vec![false; examples.len()];
            for index in order {
                let label = examples[index].label;
                if taken[label] < per_label {
                    taken[label] += 1;
                    keep[index] = true;
                }
            }
            examples
                .into_iter()
                .zip(keep)
                .filter_map(|(example, kept)| kept.then_some(example))
                .collect()
        };
        self.train = draw(std::mem::take(&mut self.train), 0x0074_7261_696e);
        self.dev = draw(std::mem::take(&mut self.dev), 0x0064_6576);
        self
    }

    /// The examples of one split.
    pub fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }

    /// SHA-256, in hex, of what training reads: the labels (names and descriptions, which also
    /// choose an upstream start) and the training and dev examples, in order. Checkpoints record
    /// it, so that a run resumes only on the data it was written with.
    pub fn digest(&self) -> String {
        fn examples(split: &[Example]) -> Vec<(&TextInput, usize)> {
            split.iter().map(|e| (&e.input, e.label)).collect()
        }
        let read = (&self.labels, examples(&self.train), examples(&self.dev));
        let bytes = serde_json::to_vec(&read).expect("labels and texts serialize");
        format!("{:x}", Sha256::digest(bytes))
    }
}

/// The share of each label's examples that [`held_out`] keeps for dev.
pub const DEV_SHARE: f64 = 0.2;

/// Splits `examples` into (train, dev), stratified: of each label's examples, drawn with `seed`,
/// [`DEV_SHARE`] rounded (at least one when the label has two or more, never its last one) go
/// to dev. Order within each part follows `examples`.
pub fn held_out(examples: Vec<Example>, labels: usize, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); labels];
    for (index, example) in examples.iter().enumerate() {
        if let Some(indices) = by_label.get_mut(example.label) {
            indices.push(index);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0064_6576);
    let mut to_dev = vec![false; examples.len()];
    for mut indices in by_label {
        let count = indices.len();
        let share = ((count as f64 * DEV_SHARE).round() as usize).max(usize::from(count >= 2));
        indices.shuffle(&mut rng);
        for &index in indices.iter().take(share.min(count.saturating_sub(1))) {
            to_dev[index] = true;
        }
    }
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for (example, dev_bound) in examples.into_iter().zip(to_dev) {
        match dev_bound {
            true => dev.push(example),
            false => train.push(example),
        }
    }
    (train, dev)
}

fn read_split(path: &Path, labels: &[Label], max: Option<usize>) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut examples = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if max.is_some_and(|max| examples.len() >= max) {
            break;
        }
        let line: Line = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        let Some(label) = labels.iter().position(|l| l.name == line.label) else {
            bail!(
                "{} line {}: label {:?} is not in labels.json",
                path.display(),
                number + 1,
                line.label
            );
        };
        examples.push(Example {
            input: TextInput::pair(line.text, line.text_pair),
            label,
        });
    }
    if examples.is_empty() {
        bail!("{} has no examples", path.display());
    }
    Ok(examples)
}

/// The `batch` training examples that stream `stream` (a unit, a task: whatever draws its own
/// rows) takes at step `step` of a run seeded `seed`: `epoch_indices` of its own seed. Every
/// training loop draws its minibatches here.
pub fn minibatch(len: usize, seed: u64, stream: usize, step: usize, batch: usize) -> Vec<usize> {
    let stream_seed = seed ^ (stream as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
    epoch_indices(len, stream_seed, step * batch, batch)
}

/// Example indices for training step after step, in shuffled epochs: every example once per
/// epoch. Stateless (a function of seed and position), so a resumed run draws what an
/// uninterrupted one would.
fn epoch_indices(len: usize, seed: u64, start: usize, count: usize) -> Vec<usize> {
    use rand::SeedableRng;
    if len == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(count);
    let mut position = start;
    while out.len() < count {
        let epoch = position / len;
        let mut order: Vec<usize> = (0..len).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        let from = position % len;
        let take = (len - from).min(count - out.len());
        out.extend_from_slice(&order[from..from + take]);
        position += take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_example_once_and_resume_where_they_stopped() {
        let first = epoch_indices(10, 3, 0, 10);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let whole = epoch_indices(10, 3, 0, 25);
        assert_eq!(&whole[..10], first.as_slice());
        let resumed = [epoch_indices(10, 3, 0, 7), epoch_indices(10, 3, 7, 18)].concat();
        assert_eq!(resumed, whole);
        assert_ne!(
            epoch_indices(10, 3, 10, 10),
            first,
            "a new epoch is a new order"
        );
    }

    #[test]
    fn a_few_shot_draw_keeps_k_per_label_in_train_and_dev_and_all_of_test() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data/sst2");
        let full = TaskData::load(&dir, None).unwrap();
        let few = full.clone().few_shot(3, 7);
        for split in [&few.train, &few.dev] {
            let mut counts = vec![0; few.labels.len()];
            for example in split.iter() {
                counts[example.label] += 1;
            }
            assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
        }
        assert_eq!(few.test.len(), full.test.len());
        let again = full.clone().few_shot(3, 7);
        let texts = |d: &TaskData| {
            d.train
                .iter()
                .map(|e| format!("{:?}", e.input))
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&few), texts(&again), "same seed, same draw");
        assert_ne!(
            texts(&few),
            texts(&full.few_shot(3, 8)),
            "another seed, another draw"
        );
    }

    #[test]
    fn a_held_out_dev_set_takes_a_fifth_of_each_label_and_leaves_each_label_in_train() {
        let example = |label: usize, i: usize| Example {
            input: TextInput::pair(format!("text {label} {i}"), None),
            label,
        };
        // Label 0: 10 examples (2 to dev); label 1: 3 (1 to dev); label 2: 1 (stays in train).
        let examples: Vec<Example> = (0..10)
            .map(|i| example(0, i))
            .chain((0..3).map(|i| example(1, i)))
            .chain(std::iter::once(example(2, 0)))
            .collect();
        let (train, dev) = held_out(examples.clone(), 3, 5);
        let count = |part: &[Example], label| part.iter().filter(|e| e.label == label).count();
        assert_eq!([count(&dev, 0), count(&dev, 1), count(&dev, 2)], [2, 1, 0]);
        assert_eq!(
            [count(&train, 0), count(&train, 1), count(&train, 2)],
            [8, 2, 1]
        );
        let texts = |part: &[Example]| {
            part.iter()
                .map(|e| format!("{:?}", e.input))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            texts(&held_out(examples.clone(), 3, 5).1),
            texts(&dev),
            "same seed, same draw"
        );
        assert_ne!(
            texts(&held_out(examples, 3, 6).1),
            texts(&dev),
            "another seed, another draw"
        );
    }
}
