//! `deltaspace tune`: stage 2, a task's z (and head) tuned in the subspace, from one or more starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::predict::load_task;
use super::train::{TraceArgs, TrainingArgs};
use super::{load_subspace, non_negative, positive};
use crate::config::Config;
use crate::det::DetKind;
use crate::model::Encoder;
use crate::subspace::Subspace;
use crate::task::{Task, TaskLimits, validate_labels, validate_name};
use crate::train::lines::{self, TuneLine};
use crate::tuning::batch::TrainTask;
use crate::tuning::head::HeadTuning;
use crate::tuning::optim::OptimizerKind;
use crate::tuning::tune::{
    CMAES, CmaOptions, START_MARGIN, Start, TUNING, Target, Trace, Tuned, default_starts,
    tune_cmaes, tune_gradient,
};

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Subspace file [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// Task directories; repeat to tune several tasks in shared runs.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// The DET whose frozen U decodes z [default: each of lora, adapter and prefix in shared runs,
    /// keeping per task the one that scores best on dev; cmaes needs one].
    #[arg(long)]
    pub det: Option<DetKind>,
    /// What of a task head trains with z (gradient optimizers): none (labels score by their
    /// descriptions, the paper's setting; cmaes needs it), bias (class priors), or prototypes
    /// (priors and label prototypes, which start at the descriptions' embeddings: the best of
    /// the three in docs/results/screen-head.jsonl).
    #[arg(long, default_value = "prototypes")]
    pub head: HeadTuning,
    /// Keep z at 0 and train only the head (the head-only baseline; with --det lora, whose θ⁰
    /// is a no-op, a head on the frozen model).
    #[arg(long)]
    pub freeze_z: bool,
    /// Where z starts: `normal`, the paper's N(0, 0.02²); `upstream`, the code of the upstream
    /// task (among those the subspace carries) whose label descriptions are nearest to the
    /// task's, by the cosine of their mean embeddings (no example is used: dev is left to judge
    /// it); `upstream:NAME`, the code of upstream task NAME; or a task file, whose z it takes
    /// (made for the same subspace; its labels and head are not used; a file named like a
    /// keyword: ./normal). Repeat it to tune from each start and keep, per task, the start (and
    /// DET) that scores best on dev, the first of equals: `--init normal --init upstream` is a
    /// warm start guarded by the cold one. Every start sees the same training rows it would
    /// alone; --max-seconds bounds all of them together. [default: normal and upstream where the
    /// subspace carries described upstream codes (the shipped one does), which takes twice the
    /// time of `--init normal`; normal alone elsewhere; --optimizer cmaes starts from its own
    /// mean and takes no --init]
    #[arg(long, num_args = 1.., conflicts_with = "freeze_z")]
    pub init: Vec<PathBuf>,
    /// With several --init starts: a later start is kept only when it leads the earlier one on
    /// dev by more than this many points of accuracy (a tie, or a lead within the margin, keeps
    /// the earlier start).
    #[arg(long, default_value_t = START_MARGIN * 100.0, value_parser = non_negative)]
    pub start_margin: f32,
    /// adam, adafactor (exact gradients) or cmaes (derivative-free).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// CMA-ES population λ (0: the default, 4 + ⌊3 ln d⌋).
    #[arg(long)]
    pub population: Option<usize>,
    /// CMA-ES initial step size σ [default: 1].
    #[arg(long, value_parser = positive::<f64>)]
    pub sigma: Option<f64>,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Output: TASK.json (one task) or a directory of <task>.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn tune(config: &Config, args: TuneArgs) -> anyhow::Result<()> {
    let single_file = args.out.extension().is_some_and(|e| e == "json");
    if single_file && args.data.len() != 1 {
        bail!(
            "--out {} is a file: give one --data, or an output directory",
            args.out.display()
        );
    }
    let gradient = check_optimizer_flags(&args)?;
    let encoder = args.training.encoder(config)?;
    let subspace = load_subspace(config, args.subspace.as_deref(), &encoder)?;
    let tasks = args.training.tasks(&encoder, &args.data)?;
    let limits = config.task_limits()?;
    // Before training, not after: a name or labels the written task could not keep would waste
    // the run.
    for task in &tasks {
        let name = &task.data.name;
        validate_name(name).with_context(|| format!("the task name (from --data {name:?})"))?;
        validate_labels(&task.data.labels, &limits).with_context(|| format!("{name}'s labels"))?;
    }
    let mut trace = args.trace.open(&args.training, TUNING, &args.optimizer)?;
    let tuning = Tuning {
        args: &args,
        encoder: &encoder,
        subspace: &subspace,
        limits: &limits,
        tasks: &tasks,
    };
    let (tuned, loaded) = match gradient {
        None => tuning.by_cmaes(trace.as_mut())?,
        Some(kind) => tuning.by_gradient(kind, trace.as_mut())?,
    };
    let starts = starts(&loaded);
    // Every file first: a reader that leaves stdout early must not cost a tuned task.
    let mut written = Vec::with_capacity(tuned.len());
    for result in tuned {
        let data = &tasks[result.task].data;
        let path = if single_file {
            args.out.clone()
        } else {
            args.out.join(format!("{}.json", data.name))
        };
        let name = data.name.clone();
        write_task(&path, name, &result, &data.labels, &subspace, &limits)?;
        let start_name = |start| start_name(&args.init, &starts, start, &result);
        written.push(TuneLine {
            task: data.name.clone(),
            det: result.det,
            head: args.head,
            optimizer: args.optimizer.clone(),
            dev: result.dev,
            test: result.test,
            start: Some(start_name(result.start)),
            upstream_similarity: result.upstream.as_ref().map(|chosen| chosen.similarity),
            dev_by_det: (result.candidates.iter())
                .filter(|c| c.start == result.start)
                .map(|c| (c.det.to_string(), c.dev.accuracy))
                .collect(),
            dev_by_start: result.dev_by_start(start_name),
            seconds: result.seconds,
            file: path,
        });
    }
    written.iter().try_for_each(lines::print)
}

/// The flags `--optimizer` reads, checked before anything loads: the gradient optimizer's kind,
/// or None for CMA-ES.
fn check_optimizer_flags(args: &TuneArgs) -> anyhow::Result<Option<OptimizerKind>> {
    match args.optimizer.as_str() {
        "cmaes" => check_cmaes_flags(args).map(|()| None),
        gradient => check_gradient_flags(args, gradient).map(Some),
    }
}

/// Adam and Adafactor: neither reads CMA-ES's flags, and a frozen z leaves a head to train.
fn check_gradient_flags(args: &TuneArgs, optimizer: &str) -> anyhow::Result<OptimizerKind> {
    let kind = optimizer.parse().map_err(|_| {
        anyhow::anyhow!("--optimizer {optimizer:?}: expected adam, adafactor or cmaes")
    })?;
    if args.population.is_some() || args.sigma.is_some() {
        bail!("--optimizer {optimizer} does not use --population or --sigma (CMA-ES's): drop it");
    }
    if args.freeze_z && args.head == HeadTuning::None {
        bail!("--freeze-z trains only the head: give --head bias or --head prototypes");
    }
    Ok(kind)
}

/// CMA-ES tunes z alone, through one DET, from its own mean: it neither checkpoints, stops
/// early nor keeps a time budget, its step is --sigma, and it scores a generation's candidates
/// in one run.
fn check_cmaes_flags(args: &TuneArgs) -> anyhow::Result<()> {
    if args.head != HeadTuning::None {
        bail!(
            "cmaes tunes z alone: give --head none (--head {} needs adam or adafactor)",
            args.head
        );
    }
    if args.det.is_none() {
        bail!("--optimizer cmaes tunes through one DET: give --det");
    }
    let unread = [
        "--checkpoint",
        "--patience",
        "--max-seconds",
        "--lr",
        "--run-rows",
    ];
    args.training.refuse_unread("--optimizer cmaes", &unread)?;
    if args.freeze_z {
        bail!("--optimizer cmaes tunes z: drop --freeze-z");
    }
    if !args.init.is_empty() {
        bail!("--optimizer cmaes starts from its own mean: drop --init");
    }
    if args.start_margin != START_MARGIN * 100.0 {
        bail!("--optimizer cmaes has one start: drop --start-margin");
    }
    Ok(())
}

/// What `tune` tunes: its arguments, the model, the subspace, the bounds a task must keep and the
/// tasks' data.
struct Tuning<'a> {
    args: &'a TuneArgs,
    encoder: &'a Encoder,
    subspace: &'a Subspace,
    limits: &'a TaskLimits,
    tasks: &'a [TrainTask],
}

/// What was tuned, and the starts it was tuned from.
type Outcome = (Vec<Tuned>, Vec<InitArg>);

impl Tuning<'_> {
    /// CMA-ES: z alone, through one DET, from its own mean (named normal).
    fn by_cmaes(&self, trace: Option<&mut Trace>) -> anyhow::Result<Outcome> {
        let args = self.args;
        let det = args.det.context("--optimizer cmaes needs --det")?;
        let schedule = args.training.schedule(CMAES);
        let options = CmaOptions {
            generations: schedule.steps,
            population: args.population.unwrap_or(0),
            batch: args.training.batch,
            sigma: args.sigma.unwrap_or(1.0),
            eval_every: schedule.eval_every,
            eval_limit: args.training.eval_limit,
            final_limit: args.training.final_limit,
            seed: args.training.seed,
        };
        let tuned = tune_cmaes(
            self.encoder,
            self.subspace,
            self.tasks,
            det,
            &options,
            trace,
        )?;
        Ok((tuned, vec![InitArg::Named(Start::Normal)]))
    }

    /// A gradient optimizer (`optimizer`: adam or adafactor): z and the head, through every DET
    /// asked for, from every start.
    fn by_gradient(
        &self,
        kind: OptimizerKind,
        trace: Option<&mut Trace>,
    ) -> anyhow::Result<Outcome> {
        let args = self.args;
        let dets = args.det.map_or(DetKind::ALL.to_vec(), |det| vec![det]);
        let loaded = load_starts(&args.init, self.subspace, self.limits, !args.freeze_z)?;
        let target = Target {
            dets: &dets,
            head: args.head,
            train_z: !args.freeze_z,
            starts: &starts(&loaded),
            start_margin: args.start_margin / 100.0,
        };
        let options = args.training.fit_options(kind, TUNING);
        let tuned = tune_gradient(
            self.encoder,
            self.subspace,
            self.tasks,
            target,
            &options,
            trace,
            None,
        )?;
        Ok((tuned, loaded))
    }
}

/// A start `--init` named: a word [`Start::named`] knows, or a code it gives (an upstream task's,
/// or a task file's z).
enum InitArg {
    Named(Start<'static>),
    Code(Vec<f32>),
}

/// `--init`'s starts in order [default: [`default_starts`]].
fn load_starts(
    init: &[PathBuf],
    subspace: &Subspace,
    limits: &TaskLimits,
    train_z: bool,
) -> anyhow::Result<Vec<InitArg>> {
    if init.is_empty() {
        let defaults = default_starts(subspace, train_z);
        return Ok(defaults.iter().copied().map(InitArg::Named).collect());
    }
    init.iter()
        .map(|path| {
            let word = path.to_str().unwrap_or_default();
            if let Some(start) = Start::named(word) {
                return Ok(InitArg::Named(start));
            }
            if let Some(name) = word.strip_prefix("upstream:") {
                return upstream_code(subspace, name).map(InitArg::Code);
            }
            load_task(path, subspace, limits)
                .map(|task| InitArg::Code(task.z))
                .with_context(|| {
                    format!(
                        "--init {}: it takes normal, upstream, upstream:NAME or a task file",
                        path.display()
                    )
                })
        })
        .collect()
}

/// The code of upstream task `name` among those `subspace` carries (`--init upstream:NAME`).
fn upstream_code(subspace: &Subspace, name: &str) -> anyhow::Result<Vec<f32>> {
    let Some(codes) = subspace.codes() else {
        bail!(
            "--init upstream:{name}: subspace {} carries no upstream codes",
            subspace.id()
        );
    };
    match codes.tasks.iter().position(|task| task == name) {
        Some(index) => Ok(codes.z[index].clone()),
        None => bail!(
            "--init upstream:{name}: subspace {} has no code for {name:?}; it has {}",
            subspace.id(),
            codes.tasks.join(", ")
        ),
    }
}

/// The starts [`load_starts`] loaded, for [`Target::starts`].
fn starts(loaded: &[InitArg]) -> Vec<Start<'_>> {
    loaded
        .iter()
        .map(|arg| match arg {
            InitArg::Named(start) => *start,
            InitArg::Code(z) => Start::Values(z),
        })
        .collect()
}

/// Start `index`'s name in a task's output line: [`Tuned::start_name`]'s, or the task file as
/// `--init` gave it.
fn start_name(init: &[PathBuf], starts: &[Start<'_>], index: usize, tuned: &Tuned) -> String {
    tuned
        .start_name(starts, index)
        .unwrap_or_else(|| init[index].display().to_string())
}

/// Writes a tuned task, checked against the configuration's bounds as `load_task` reads it.
fn write_task(
    path: &Path,
    name: String,
    tuned: &Tuned,
    labels: &[crate::task::Label],
    subspace: &Subspace,
    limits: &TaskLimits,
) -> anyhow::Result<()> {
    let task = Task {
        name,
        det: tuned.det,
        z: tuned.z.clone(),
        labels: labels.to_vec(),
        head: tuned.head.clone(),
        subspace: Some(subspace.id()),
    };
    task.validate(subspace.d(), limits)?;
    super::write_json(path, &task)
}
