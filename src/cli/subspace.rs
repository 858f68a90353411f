//! `deltaspace subspace random|info`.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use crate::config::Config;
use crate::det::Theta0;
use crate::model::ModelFiles;
use crate::subspace::Subspace;
use crate::tensor_file::Storage;
use crate::train::lines;

#[derive(Debug, clap::Subcommand)]
pub enum SubspaceCommand {
    /// Write a random subspace through θ⁰ (base = θ⁰, U ~ N(0, 1/D)): the IPT control, and a start.
    Random {
        /// Model directory [default: [model] dir].
        #[arg(long)]
        model: Option<PathBuf>,
        /// Subspace dimension d.
        #[arg(long, default_value_t = 16, value_parser = super::at_least::<1>)]
        dim: usize,
        /// Random seed (same seed, same subspace).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Store values as f16 (half the size).
        #[arg(long)]
        f16: bool,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a subspace file against a model and print its id, d, DETs and the upstream tasks
    /// whose codes it carries (tune --init upstream chooses among them).
    Info {
        /// Model directory [default: [model] dir].
        #[arg(long)]
        model: Option<PathBuf>,
        /// The subspace file.
        file: PathBuf,
    },
}

pub fn run(config: &Config, command: SubspaceCommand) -> anyhow::Result<()> {
    match command {
        SubspaceCommand::Random {
            model,
            dim,
            seed,
            f16,
            out,
        } => {
            anyhow::ensure!(dim >= 1, "--dim must be at least 1");
            let files = ModelFiles::open(model.as_deref().unwrap_or(&config.model.dir))?;
            let theta0 = Theta0::load(&files)?;
            let subspace = Subspace::random(&files.manifest, &theta0, dim, seed)?;
            let storage = if f16 { Storage::F16 } else { Storage::F32 };
            subspace
                .save(&out, storage)
                .with_context(|| format!("writing {}", out.display()))?;
            let saved = Subspace::load(&out, &files.manifest)?;
            lines::print(&json!({"id": saved.id(), "d": saved.d(), "file": out}))?;
        }
        SubspaceCommand::Info { model, file } => {
            let files = ModelFiles::open(model.as_deref().unwrap_or(&config.model.dir))?;
            let subspace = Subspace::load(&file, &files.manifest)
                .with_context(|| format!("loading {}", file.display()))?;
            let codes = subspace.codes();
            let line = json!({"id": subspace.id(), "name": subspace.name(), "d": subspace.d(),
                "dets": files.manifest.det_names(),
                "upstream_codes": codes.map_or(&[][..], |codes| &codes.tasks),
                "upstream_descriptions": codes.is_some_and(|codes| codes.descriptions.is_some())});
            lines::print(&line)?;
        }
    }
    Ok(())
}
