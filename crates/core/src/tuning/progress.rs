//! Progress of long runs: an indicatif bar on a terminal, log lines otherwise (background runs
//! write logs, and a bar in a log file is noise).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar showing the training loss and the last dev accuracy.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    last_dev: std::cell::Cell<Option<f32>>,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            last_dev: std::cell::Cell::new(None),
        }
    }

    pub fn set_position(&self, position: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    /// Step `position` finished with `loss`; `dev` when it was evaluated.
    pub fn report(&self, position: u64, loss: f32, dev: Option<f32>) {
        if dev.is_some() {
            self.last_dev.set(dev);
        }
        let dev_text = self
            .last_dev
            .get()
            .map(|d| format!(" dev {d:.4}"))
            .unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(format!("loss {loss:.4}{dev_text}"));
            }
            None if dev.is_some() || position == self.total || position.is_multiple_of(10) => {
                tracing::info!(
                    "{} step {position}/{}: loss {loss:.4}{dev_text}",
                    self.label,
                    self.total
                );
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
