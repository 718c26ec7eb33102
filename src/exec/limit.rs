//! A run refuses to start when the plan's memory estimate does not fit:
//! over the memory budget (`--memory-budget` or the file's
//! `memory_budget`), or over the memory this process may use (a cgroup
//! limit, else the physical memory available), rather than being killed
//! by the kernel half-way with no message.

use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::cost::format_bytes;
use crate::plan::{Op, Plan, Step};
use crate::syntax::Span;

/// A memory limit and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub source: String,
}

/// The memory this process may use: the cgroup's limit (v2
/// `memory.max`, v1 `memory.limit_in_bytes`) and the physical memory
/// available (`MemAvailable`, else `MemTotal`, from /proc/meminfo),
/// whichever is smaller; `None` when neither can be read.
pub fn available() -> Option<Limit> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut limits = Vec::new();
    if let Some(b) = read("/sys/fs/cgroup/memory.max").and_then(|s| parse_cgroup(&s)) {
        limits.push(Limit {
            bytes: b,
            source: "the cgroup limit (/sys/fs/cgroup/memory.max)".into(),
        });
    } else if let Some(b) =
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes").and_then(|s| parse_cgroup(&s))
    {
        limits.push(Limit {
            bytes: b,
            source: "the cgroup limit (/sys/fs/cgroup/memory/memory.limit_in_bytes)".into(),
        });
    }
    if let Some(l) = read("/proc/meminfo").and_then(|s| parse_meminfo(&s)) {
        limits.push(l);
    }
    limits.into_iter().min_by_key(|l| l.bytes)
}

/// A cgroup limit file: `max` (v2) or an absurdly large number (v1's
/// "no limit") mean none.
pub fn parse_cgroup(text: &str) -> Option<u64> {
    let t = text.trim();
    let b: u64 = t.parse().ok()?;
    (b < 1 << 60).then_some(b)
}

/// `MemAvailable` from /proc/meminfo, else `MemTotal`.
pub fn parse_meminfo(text: &str) -> Option<Limit> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    if let Some(b) = field("MemAvailable:") {
        return Some(Limit {
            bytes: b,
            source: "the physical memory available (MemAvailable in /proc/meminfo)".into(),
        });
    }
    field("MemTotal:").map(|b| Limit {
        bytes: b,
        source: "the physical memory (MemTotal in /proc/meminfo)".into(),
    })
}

/// Refuses a plan whose estimated peak is over `budget` or `available`:
/// the message names the step where memory peaks, the estimate and the
/// limit with where it came from.
pub fn check(plan: &Plan, budget: Option<Limit>, available: Option<Limit>) -> Result<(), String> {
    check_peak(plan, plan.peak_step(), budget, available)
}

/// [`check`] for a process that runs only the top-level steps in `runs`
/// (a shard).
pub fn check_of(
    plan: &Plan,
    runs: &std::collections::BTreeSet<u32>,
    budget: Option<Limit>,
    available: Option<Limit>,
) -> Result<(), String> {
    check_peak(plan, plan.peak_step_of(runs), budget, available)
}

fn check_peak(
    plan: &Plan,
    peak: Option<(crate::plan::StepId, u64)>,
    budget: Option<Limit>,
    available: Option<Limit>,
) -> Result<(), String> {
    let Some((id, peak)) = peak else {
        return Ok(());
    };
    let limit = [budget, available]
        .into_iter()
        .flatten()
        .filter(|l| peak > l.bytes)
        .min_by_key(|l| l.bytes);
    let Some(limit) = limit else {
        return Ok(());
    };
    let step = plan.step(id);
    let what = describe(step);
    Err(format!(
        "this run would need about {} of memory, at step #{} (line {}: {what}), over {} of {}; \
         nothing was run. Use a smaller structure (`nngeo plan` shows each step's memory), fewer \
         examples, or a machine with more memory",
        format_bytes(peak),
        id.0,
        step.span.line,
        format_bytes(limit.bytes),
        limit.source
    ))
}

/// What a step is, in words: `representation `B` (BlockDiag)`.
fn describe(step: &Step) -> String {
    match &step.op {
        Op::Repr {
            name, structure, ..
        } => format!("representation `{name}` ({})", structure.name()),
        Op::Measure { key, .. } => format!("measurement \"{key}\""),
        Op::Train { name, .. } => format!("training run `{name}`"),
        Op::Model { name, .. } | Op::WithWeights { name, .. } => format!("model `{name}`"),
        Op::Data { name, .. } | Op::Transform { name, .. } => format!("data `{name}`"),
        Op::Vector { name, .. } => format!("vector `{name}`"),
        Op::Matrix { name, .. } => format!("representation `{name}`"),
        Op::Save { path, .. } => format!("save to `{path}`"),
        Op::Plot { file, .. } => format!("plot `{file}`"),
        Op::Expect { text, .. } => format!("expect \"{text}\""),
    }
}

/// The check-time form of [`check`] against a budget of `bytes` (given by
/// `from`, e.g. `--memory-budget`): a located error at the statement where
/// the run's memory peaks, when the plan's estimated peak is over it.
pub fn over_budget(plan: &Plan, bytes: u64, from: &str) -> Option<Diagnostic> {
    let (id, peak) = plan.peak_step()?;
    if peak <= bytes {
        return None;
    }
    let step = plan.step(id);
    let what = describe(step);
    Some(
        Diagnostic::new(
            ErrorKind::OverBudget {
                what: format!("the run (its peak, at {what})"),
                needed: format_bytes(peak),
                budget: format!("{} ({from})", format_bytes(bytes)),
            },
            Span::new(step.span.start, step.span.end),
            format!("the run's memory peaks here, at about {}", format_bytes(peak)),
        )
        .hint("`nngeo plan` shows each step's memory; use a smaller structure or fewer examples, or raise the budget"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_meminfo_files() {
        assert_eq!(parse_cgroup("max\n"), None);
        assert_eq!(parse_cgroup("4294967296\n"), Some(4 << 30));
        assert_eq!(parse_cgroup("9223372036854771712\n"), None);
        let m = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(parse_meminfo(m).unwrap().bytes, 8_000_000 * 1024);
        let m = "MemTotal:       16000000 kB\n";
        assert!(parse_meminfo(m).unwrap().source.contains("MemTotal"));
    }
}
