//! `deltaspace import`: bulk-loads tasks (TASK.json files, JSON-lines files, or directories of
//! them) into the task store (`[store] url`: SQLite or PostgreSQL), checked as uploads are. A
//! SQLite server serves them from its next start; PostgreSQL replicas as they follow the store.
//! For many tasks at once, where one HTTP upload per task would take hours.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::model::ModelFiles;
use crate::server::{ImportError, import_tasks};
use crate::subspace::Subspace;
use crate::task::Task;

/// Arguments of `deltaspace import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// TASK.json files, JSON-lines files (`.jsonl`, one task per line), or directories of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Directory of the SQLite task database when `[store] url` is empty [default: [server] data_dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subspace file the tasks belong to [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
}

pub fn import(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let limits = config.task_limits()?;
    let model_dir = args.model.as_deref().unwrap_or(&config.model.dir);
    let files = ModelFiles::open(model_dir)
        .with_context(|| format!("loading model {}", model_dir.display()))?;
    let subspace_path = args.subspace.as_deref().unwrap_or(&config.model.subspace);
    let subspace = Subspace::load(subspace_path, &files.manifest)
        .with_context(|| format!("loading subspace {}", subspace_path.display()))?;
    let sources = task_files(&args.paths)?;
    let store = config.store_location(args.data_dir.as_deref())?;
    let started = std::time::Instant::now();
    let summary = import_tasks(&store, &files.manifest, &subspace, &limits, || {
        sources.iter().flat_map(|path| read_tasks(path))
    })
    .context("nothing was imported")?;
    for (id, count) in &summary.skipped {
        tracing::warn!(
            subspace = %id,
            tasks = count,
            loaded = %subspace.id(),
            "tasks of another subspace were left out; import them with --subspace naming that \
             subspace's file, or tune them again for the loaded one"
        );
    }
    tracing::info!(
        written = summary.written,
        created = summary.created,
        skipped = summary.skipped.values().sum::<usize>(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        store = store.backend(),
        "tasks imported; a SQLite server serves them after its next start, PostgreSQL replicas \
         as they follow the store"
    );
    Ok(())
}

/// The files named, with directories replaced by their `*.json` and `*.jsonl` files in name order.
fn task_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "jsonl"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            anyhow::bail!("{} is neither a file nor a directory", path.display());
        }
    }
    Ok(files)
}

/// The tasks of one file: a whole-file TASK.json, or one task per non-empty line of a `.jsonl`.
fn read_tasks(path: &Path) -> Box<dyn Iterator<Item = Result<Task, ImportError>>> {
    let unreadable = |at: String, source: Box<dyn std::error::Error + Send + Sync>| {
        ImportError::Unreadable { at, source }
    };
    let shown = path.display().to_string();
    if path.extension().is_some_and(|e| e != "jsonl") {
        let task = Task::load(path).map_err(|e| unreadable(shown, e.into()));
        return Box::new(std::iter::once(task));
    }
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) => return Box::new(std::iter::once(Err(unreadable(shown, error.into())))),
    };
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Box::new(lines.filter_map(move |(index, line)| {
        let at = format!("{shown}:{}", index + 1);
        match line {
            Err(error) => Some(Err(unreadable(at, error.into()))),
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(serde_json::from_str(&line).map_err(|e| unreadable(at, e.into()))),
        }
    }))
}
