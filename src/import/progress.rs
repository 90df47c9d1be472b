//! The import's progress bar, drawn on standard error only when it is a terminal, so logs and
//! pipes get the report alone.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for `total` rows, hidden when standard error is not a terminal.
    pub fn new(total: usize) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:<13} [{bar:30}] {human_pos}/{human_len} rows, {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }

    /// Names what is being written now.
    pub fn stage(&self, name: &'static str) {
        self.0.set_message(name);
    }

    pub fn advance(&self, rows: usize) {
        self.0.inc(rows as u64);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
