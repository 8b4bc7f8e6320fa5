//! The progress of a long command over records: a bar on a terminal, else (a log, a pipe) one line on stderr every
//! few records, so that a run in the background still says how far it got. Bars of work running side by side (the
//! demo's) are drawn together, and lines said with [`say`] go above them.

use std::sync::LazyLock;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Every bar of the process, drawn together on stderr.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Writes `line` to stderr, above the bars being drawn.
pub fn say(line: &str) {
    if BARS.is_hidden() {
        eprintln!("{line}");
    } else {
        // A failed write to the terminal leaves nothing to tell.
        let _ = BARS.println(line);
    }
}

pub struct Progress {
    bar: ProgressBar,
    unit: &'static str,
    /// Records between two lines when the bar is hidden.
    every: usize,
}

impl Progress {
    /// A bar counting `unit` (`prompts`, `pairs`), or a line every `every` records when stderr is not a terminal.
    pub fn new(unit: &'static str, every: usize) -> anyhow::Result<Progress> {
        let style = ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} ETA {{eta}}"))
            .context("the progress bar's template")?;
        let bar = BARS.add(ProgressBar::new(0).with_style(style));
        Ok(Progress { bar, unit, every: every.max(1) })
    }

    /// `done` of `total` records finished (`message`: the counts so far).
    pub fn update(&self, done: usize, total: usize, message: &str) {
        if self.bar.is_hidden() {
            if done.is_multiple_of(self.every) || done == total {
                eprintln!("{done}/{total} {} {message}", self.unit);
            }
            return;
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.set_message(message.to_string());
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        BARS.remove(&self.bar);
    }
}
