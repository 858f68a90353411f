//! `deltaspace report`: the paper's tables from a results folder, or issue 10's comparison from
//! `scripts/quality.sh`'s lines.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::train::quality;

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Results directory (JSON lines laid out by scripts/pipeline.sh).
    #[arg(long, required_unless_present = "quality")]
    pub results: Option<PathBuf>,
    /// Instead: the comparison against a user's alternatives, from the JSON lines of
    /// scripts/quality.sh (docs/results/quality/baselines.jsonl and <subspace>.jsonl), as one
    /// table per data size. A later file's line of the same run (row, task, shots, seed)
    /// replaces an earlier file's; one subspace at a time.
    #[arg(long, num_args = 1.., conflicts_with = "results")]
    pub quality: Vec<PathBuf>,
    /// The subspace the main tables are about, as named in the results (e.g. d16).
    #[arg(long, default_value = "d16")]
    pub space: String,
    /// Also write the report as JSON here. With --quality: an array of the lines read and
    /// the derived "guarded" ones, each of which names in "kept" the row `tune`'s default keeps.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    if !args.quality.is_empty() {
        let lines = quality::read_all(&args.quality)?;
        print!("{}", quality::markdown(&lines));
        if let Some(path) = &args.json {
            write_json(path, &quality::with_guarded(&lines))?;
        }
        return Ok(());
    }
    let results = args
        .results
        .as_deref()
        .context("give --results DIR or --quality FILE")?;
    let report = crate::train::report::build(results, &args.space)?;
    anyhow::ensure!(
        !report.tasks.is_empty(),
        "{} has no original.jsonl results",
        results.display()
    );
    print!("{}", crate::train::report::markdown(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}
