//! `deltaspace export`: every stored task as JSON lines, the format `deltaspace import` reads, so
//! tasks move between stores (SQLite to PostgreSQL: export with the old `[store] url`, import with
//! the new one) or into a backup.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::atomic_file;
use crate::config::Config;
use crate::server::export_tasks;

/// Arguments of `deltaspace export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// File to write [default: standard output].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the SQLite task database when `[store] url` is empty [default: [server] data_dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Writes the tasks to `--out` whole or not at all: a store that fails midway leaves an earlier
/// backup at that path as it was.
pub fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let store = config.store_location(args.data_dir.as_deref())?;
    let mut written = 0;
    let mut export_to = |out: &mut dyn Write| -> anyhow::Result<()> {
        written = export_tasks(&store, out).context("exporting tasks")?;
        Ok(out.flush()?)
    };
    match &args.out {
        Some(path) => atomic_file::write(path, |out| export_to(out))
            .with_context(|| format!("writing {}", path.display()))?,
        None => export_to(&mut std::io::BufWriter::new(std::io::stdout().lock()))?,
    }
    tracing::info!(written, store = store.backend(), "tasks exported");
    Ok(())
}
