//! `deltaspace landscape`: accuracy over a plane of z, through every DET (the paper's figure).

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::eval::{ScoringArgs, check_labels_match};
use super::predict::load_task;
use super::{at_least, non_negative};
use crate::config::Config;
use crate::task::Task;
use crate::train::lines::{self, LandscapeLine};
use crate::tuning::data::Split;

/// Arguments of `landscape`: the plane through --tasks or along --directions.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("plane").required(true).args(["tasks", "directions"])))]
pub struct LandscapeArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Three TASK.json files: the task's solutions found with Adapter, LoRA and Prefix; the plane
    /// passes through their z.
    #[arg(long, num_args = 3, conflicts_with = "directions")]
    pub tasks: Vec<PathBuf>,
    /// Instead: a centre and two directions as JSON arrays of d numbers: '[..]' '[..]' '[..]'.
    #[arg(long, num_args = 3)]
    pub directions: Vec<String>,
    /// Grid points per axis, 2 to 201 (every point is a z of d values per DET, scored on dev).
    #[arg(long, default_value_t = 9, value_parser = grid_points)]
    pub grid: usize,
    /// Extra room around the points, as a fraction of their spread (at least 1 unit).
    #[arg(long, default_value_t = 0.5, value_parser = non_negative)]
    pub margin: f32,
    /// dev or test.
    #[arg(long, default_value = "dev")]
    pub split: Split,
    /// Output directory: <task>.<det>.png per DET and <task>.landscape.json.
    #[arg(long)]
    pub out: PathBuf,
    /// A TrueType font for the labels [default: the system's DejaVu Sans or Liberation Sans].
    #[arg(long, env = "DELTASPACE_FONT")]
    pub font: Option<PathBuf>,
}

/// clap's parser for --grid: at least 2 points per axis, and at most 201, whose 3 × 201² codes
/// of d = 1,024 already take 0.5 GB (a larger grid aborted on its allocation).
fn grid_points(text: &str) -> Result<usize, String> {
    let points = at_least::<2>(text)?;
    match points {
        ..=201 => Ok(points),
        _ => Err(format!("{points} points per axis: at most 201")),
    }
}

pub fn landscape(config: &Config, args: LandscapeArgs) -> anyhow::Result<()> {
    use crate::train::landscape::{Marker, Plane, draw, evaluate_grid};
    let encoder = args.scoring.encoder(config)?;
    let subspace = args.scoring.subspace(config, &encoder)?;
    let data = args.scoring.task(&encoder)?.remove(0);
    let limits = config.task_limits()?;
    let (plane, markers) = if args.tasks.len() == 3 {
        let tasks: Vec<Task> = args
            .tasks
            .iter()
            .map(|path| load_task(path, &subspace, &limits))
            .collect::<anyhow::Result<_>>()?;
        for (path, task) in args.tasks.iter().zip(&tasks) {
            // The plane is one of z, scored through the label descriptions: a head of one task
            // has no place on it.
            if task.head.is_some() {
                bail!(
                    "{}: landscape scores z alone, and this task has a head; tune the three \
                     with --head none",
                    path.display()
                );
            }
            check_labels_match(task, &data)?;
        }
        let points = [tasks[0].z.clone(), tasks[1].z.clone(), tasks[2].z.clone()];
        let plane = Plane::through(&points)?;
        let markers = tasks
            .iter()
            .map(|t| {
                let (x, y) = plane.coordinates(&t.z);
                Marker {
                    label: format!("z_{}", t.det.letter()),
                    x,
                    y,
                }
            })
            .collect();
        (plane, markers)
    } else if args.directions.len() == 3 {
        let parse = |s: &String| {
            serde_json::from_str::<Vec<f32>>(s)
                .with_context(|| format!("{s:?} is not a JSON array of numbers"))
        };
        let (centre, first, second) = (
            parse(&args.directions[0])?,
            parse(&args.directions[1])?,
            parse(&args.directions[2])?,
        );
        anyhow::ensure!(
            [&centre, &first, &second]
                .iter()
                .all(|v| v.len() == subspace.d()),
            "each of --directions needs d = {} numbers",
            subspace.d()
        );
        let plane = Plane::along(centre, &first, &second)?;
        (
            plane,
            vec![Marker {
                label: "centre".into(),
                x: 0.0,
                y: 0.0,
            }],
        )
    } else {
        bail!("give --tasks A.json L.json P.json or --directions CENTRE E1 E2");
    };
    let landscape = evaluate_grid(
        &encoder,
        &subspace,
        &data,
        plane,
        markers,
        args.grid,
        args.margin,
        args.split,
        args.scoring.limit,
    )?;
    let files = draw(&landscape, &args.out, args.font.as_deref())?;
    let json_path = args.out.join(format!("{}.landscape.json", landscape.task));
    super::write_json(&json_path, &landscape)?;
    lines::print(&LandscapeLine {
        task: landscape.task.clone(),
        images: files,
        grid: json_path,
    })
}
