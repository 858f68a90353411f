//! The layering, enforced. Between layer groups the workspace does it: each group is a crate, and
//! these tests pin which crate may depend on which. Inside the core crate, where the compiler
//! cannot, they parse every source file (syn) and check that no module names a module to its
//! right, grouped `use crate::{…}` trees and inline paths included, and that ONNX Runtime types
//! never leave `runtime` and `model`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The deltaspace crates a package depends on (normal dependencies only).
fn deltaspace_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter(|k| k.starts_with("deltaspace"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_crate_depends_only_on_the_crates_to_its_left() {
    let expected: &[(&str, &[&str])] = &[
        ("crates/core", &[]),
        ("crates/server", &["deltaspace-core"]),
        ("crates/train", &["deltaspace-core"]),
        (
            ".",
            &["deltaspace-core", "deltaspace-server", "deltaspace-train"],
        ),
    ];
    for (dir, allowed) in expected {
        let found = deltaspace_dependencies(&root().join(dir).join("Cargo.toml"));
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        assert_eq!(found, allowed, "{dir}/Cargo.toml");
    }
}

/// Core's modules from left to right; a module may name only modules to its left (and itself).
const CORE_ORDER: &[&[&str]] = &[
    &["runtime", "atomic_file", "tensor_file", "secret"],
    &["model"],
    &["det"],
    &["subspace", "task"],
    &["classifier"],
    &["tuning"],
];

fn rank(module: &str) -> Option<usize> {
    CORE_ORDER.iter().position(|group| group.contains(&module))
}

/// The first segment after `crate` of every path a file names, and whether it names `ort`.
#[derive(Default)]
struct Names {
    crate_modules: BTreeSet<String>,
    ort: bool,
}

impl Names {
    fn of_use_tree(&mut self, tree: &syn::UseTree, under_crate: bool) {
        match tree {
            syn::UseTree::Path(path) if path.ident == "crate" => self.of_use_tree(&path.tree, true),
            syn::UseTree::Path(path) if under_crate => {
                self.crate_modules.insert(path.ident.to_string());
            }
            syn::UseTree::Path(path) => self.ort |= path.ident == "ort",
            syn::UseTree::Name(name) if under_crate => {
                self.crate_modules.insert(name.ident.to_string());
            }
            syn::UseTree::Rename(rename) if under_crate => {
                self.crate_modules.insert(rename.ident.to_string());
            }
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.of_use_tree(item, under_crate);
                }
            }
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        self.of_use_tree(tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter().map(|s| s.ident.to_string());
        match segments.next().as_deref() {
            Some("crate") => {
                if let Some(module) = segments.next() {
                    self.crate_modules.insert(module);
                }
            }
            Some("ort") if path.segments.len() > 1 => self.ort = true,
            _ => {}
        }
        syn::visit::visit_path(self, path);
    }
}

fn sources(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every source file of core's `src/` with its top module (`det` for det.rs, `model` for
/// model/encoder.rs) and the names it uses.
fn core_files() -> Vec<(PathBuf, String, Names)> {
    let src = root().join("crates/core/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .filter(|file| !file.ends_with("lib.rs"))
        .map(|file| {
            let relative = file.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = Path::new(first.as_os_str())
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            let syntax =
                syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut names = Names::default();
            names.visit_file(&syntax);
            (file, module, names)
        })
        .collect()
}

#[test]
fn no_core_module_names_a_module_to_its_right() {
    let files = core_files();
    assert!(files.len() > 10, "core's sources were found");
    for (file, module, names) in files {
        let own = rank(&module).unwrap_or_else(|| panic!("{module} is missing from CORE_ORDER"));
        for used in &names.crate_modules {
            let used_rank = rank(used).unwrap_or_else(|| panic!("{used} is not a core module"));
            assert!(
                used_rank <= own,
                "{} ({module}) names crate::{used}, a module to its right",
                file.display()
            );
        }
    }
}

#[test]
fn onnx_runtime_types_stay_in_runtime_and_model() {
    for (file, module, names) in core_files() {
        if module != "runtime" && module != "model" {
            assert!(
                !names.ort,
                "{} uses ort:: outside runtime and model",
                file.display()
            );
        }
    }
    for dir in ["crates/server", "crates/train", "."] {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        let value: toml::Table = toml::from_str(&manifest).unwrap();
        let dependencies = value.get("dependencies").and_then(|d| d.as_table());
        assert!(
            dependencies.is_none_or(|d| !d.contains_key("ort")),
            "{dir} depends on ort"
        );
    }
}

#[test]
fn a_grouped_use_of_a_module_to_the_right_is_caught() {
    let syntax: syn::File = syn::parse_str(
        "use crate::{det::DetKind, classifier::{code_matrices}}; fn f() { crate::tuning::x(); }",
    )
    .unwrap();
    let mut names = Names::default();
    names.visit_file(&syntax);
    let expected: BTreeSet<String> = ["classifier", "det", "tuning"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names.crate_modules, expected);
}

/// Finds reads of the process environment (`std::env::var`, `env::vars_os`, …).
#[derive(Default)]
struct EnvReads(usize);

impl<'ast> Visit<'ast> for EnvReads {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let names: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let reads = names.windows(2).any(|pair| {
            pair[0] == "env" && ["var", "var_os", "vars", "vars_os"].contains(&pair[1].as_str())
        });
        self.0 += usize::from(reads);
        syn::visit::visit_path(self, path);
    }
}

#[test]
fn only_the_edge_reads_the_environment() {
    let mut files = Vec::new();
    for dir in ["crates/core/src", "crates/server/src", "crates/train/src"] {
        sources(&root().join(dir), &mut files);
    }
    assert!(files.len() > 30, "the crates' sources were found");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut reads = EnvReads::default();
        reads.visit_file(&syntax);
        assert_eq!(
            reads.0,
            0,
            "{} reads the environment; only config and cli may",
            file.display()
        );
    }
    let mut probe = EnvReads::default();
    probe.visit_file(&syn::parse_str("fn f() { std::env::var_os(\"X\"); }").unwrap());
    assert_eq!(probe.0, 1, "the probe finds a read");
}
