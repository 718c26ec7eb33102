//! What a person sees while a run goes: on a terminal, a bar over the
//! plan's steps whose message follows a training run step by step (loss,
//! ETA); without one (CI logs, batch jobs), a plain line whenever ten
//! seconds have passed, so that a long run is never silent for minutes.

use crate::report;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a line is printed without a terminal, unless the environment
/// variable `NNGEO_PROGRESS_EVERY` (seconds) says otherwise.
const QUIET_FOR: Duration = Duration::from_secs(10);

fn quiet_for() -> Duration {
    std::env::var("NNGEO_PROGRESS_EVERY")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(QUIET_FOR, Duration::from_secs_f64)
}

pub struct Progress {
    bar: indicatif::ProgressBar,
    terminal: bool,
    /// Top-level steps of the plan, and how many have started.
    steps: usize,
    started: usize,
    /// What runs now (`train net`, `measure trace(F)`).
    current: String,
    step_t0: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(steps: usize, experiment: &str) -> Self {
        let now = Instant::now();
        Progress {
            bar: report::progress(steps as u64, experiment),
            terminal: std::io::stderr().is_terminal(),
            steps,
            started: 0,
            current: String::new(),
            step_t0: now,
            last_line: now,
            every: quiet_for(),
        }
    }

    /// A top-level step starts (skipped ones count too).
    pub fn step(&mut self, what: String) {
        self.bar.inc(1);
        self.started += 1;
        self.bar.set_message(what.clone());
        self.current = what;
        self.step_t0 = Instant::now();
    }

    /// A step finished: without a terminal, a line if the log has been
    /// quiet for a while.
    pub fn step_done(&mut self) {
        if !self.terminal && self.last_line.elapsed() >= self.every {
            self.line(format!(
                "step {}/{} done: {} ({:.1} s)",
                self.started,
                self.steps,
                self.current,
                self.step_t0.elapsed().as_secs_f64()
            ));
        }
    }

    /// Optimiser step `done` of `total` of the running training, with its
    /// loss.
    pub fn train(&mut self, done: u64, total: u64, loss: f64) {
        let elapsed = self.step_t0.elapsed().as_secs_f64();
        let eta = if done > 0 {
            elapsed / done as f64 * total.saturating_sub(done) as f64
        } else {
            f64::NAN
        };
        let text = format!(
            "{}: step {done}/{total}, loss {loss:.4}, eta {}",
            self.current,
            eta_text(eta)
        );
        if self.terminal {
            self.bar.set_message(text);
        } else if self.last_line.elapsed() >= self.every {
            self.line(text);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn line(&mut self, text: String) {
        eprintln!("[nngeo] {text}");
        self.last_line = Instant::now();
    }
}

fn eta_text(s: f64) -> String {
    if !s.is_finite() {
        "?".into()
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}
