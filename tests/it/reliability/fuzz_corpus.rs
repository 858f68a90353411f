//! The fuzz targets' corpus (fuzz/corpus/, minimized after the runs in docs/RELIABILITY.md, plus
//! every input that once found a bug) replayed through the same harness the targets run, so CI
//! compiles the harness against today's API and keeps every finding fixed without libFuzzer.

use std::path::Path;

#[path = "../../../fuzz/harness.rs"]
mod harness;

/// A fuzz target's body: any bytes in, a panic on failure.
type Harness = fn(&[u8]);

#[test]
fn the_fuzz_corpus_replays_without_a_failure() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let targets: [(&str, Harness); 2] = [
        ("request_decoding", harness::request_decoding),
        ("task_validation", harness::task_validation),
    ];
    for (target, run) in targets {
        let mut inputs = 0;
        for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            inputs += 1;
        }
        assert!(inputs >= 5, "{target}: only {inputs} corpus inputs");
    }
}
