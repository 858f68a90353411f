//! `deltaspace export`: every stored task as JSON lines, the format `deltaspace import` reads, so
//! tasks move between stores (SQLite to PostgreSQL: export with the old `[store] url`, import with
//! the new one) or into a backup.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

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

pub fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let store = config.store_location(args.data_dir.as_deref())?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let written = export_tasks(&store, &mut out).context("exporting tasks")?;
    tracing::info!(written, store = store.backend(), "tasks exported");
    Ok(())
}
