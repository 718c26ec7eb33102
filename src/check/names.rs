//! Layer names and glob patterns: `layers = ["layer3.*", "fc"]`,
//! `K["*.conv1"]`, `for layer in layers(net, "layer4.*")`. Names are
//! PyTorch module paths; `*` matches any run of characters (dots
//! included). A name or pattern that matches nothing is an error at it.

use super::glob;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::syntax::Span;

impl Checker<'_> {
    /// The layers of `known` that `pattern` names, in `known`'s order, or
    /// an error at `at` (`owner` says whose layers they are).
    pub(super) fn match_layers(
        &mut self,
        pattern: &str,
        known: &[&str],
        at: Span,
        owner: &str,
    ) -> Option<Vec<String>> {
        let hits: Vec<String> = known
            .iter()
            .filter(|k| glob(pattern, k))
            .map(|k| k.to_string())
            .collect();
        if !hits.is_empty() {
            return Some(hits);
        }
        let is_glob = pattern.contains('*');
        // For a pattern, suggest against the patterns the layers would
        // match by their prefix (`layer3.*`), else against the names.
        let prefixes: Vec<String> = known
            .iter()
            .filter_map(|k| k.rsplit_once('.').map(|(p, _)| format!("{p}.*")))
            .collect();
        let suggestion = if is_glob {
            did_you_mean(pattern, prefixes.iter().map(|s| s.as_str()))
                .or_else(|| did_you_mean(pattern, known.iter().copied()))
        } else {
            did_you_mean(pattern, known.iter().copied())
        };
        let shown: Vec<&str> = known.iter().take(12).copied().collect();
        let more = if known.len() > 12 {
            format!(", ... ({} in all)", known.len())
        } else {
            String::new()
        };
        self.error(
            Diagnostic::new(
                ErrorKind::Unknown {
                    what: if is_glob { "layer pattern" } else { "layer" }.into(),
                    name: pattern.into(),
                },
                at,
                if is_glob {
                    format!("matches no layer of {owner}")
                } else {
                    format!("{owner} has no parameterised layer `{pattern}`")
                },
            )
            .hint_opt(suggestion)
            .hint(format!(
                "layers with parameters: {}{more}",
                shown.join(", ")
            )),
        );
        None
    }
}
