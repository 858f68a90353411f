//! `deltaspace report`: the paper's tables from a results folder, or issue 10's comparison from
//! `scripts/quality.sh`'s lines.

use std::io::Write;
use std::path::PathBuf;

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
    #[arg(long, default_value = "d16", conflicts_with = "quality")]
    pub space: String,
    /// Also write the report as JSON here. With --quality: an array of the lines read and
    /// the derived "guarded" ones, each of which names in "kept" the row `tune`'s default keeps.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    if !args.quality.is_empty() {
        let lines = quality::read_all(&args.quality)?;
        write!(std::io::stdout(), "{}", quality::markdown(&lines)).context("writing stdout")?;
        if let Some(path) = &args.json {
            super::write_json(path, &quality::with_guarded(&lines))?;
        }
        return Ok(());
    }
    let results = args
        .results
        .as_deref()
        .context("give --results DIR or --quality FILE")?;
    let report = crate::train::report::build(results, &args.space)?;
    write!(
        std::io::stdout(),
        "{}",
        crate::train::report::markdown(&report)
    )
    .context("writing stdout")?;
    if let Some(path) = &args.json {
        super::write_json(path, &report)?;
    }
    Ok(())
}
