//! Which backend runs a plan: one linked into this executable, or a
//! plugin found on the search path. It sits above `backend` (the trait),
//! `engine` (the executor the built-in backend runs) and `plugin` (the
//! loader), so none of those needs another's selection logic.

use crate::backend::{Backend, BackendError};

/// The built-in candle backend.
pub fn candle_backend() -> Box<dyn Backend> {
    Box::new(crate::engine::Engine::new(
        "candle",
        concat!("nngeo ", env!("CARGO_PKG_VERSION"), ", candle-core 0.11"),
        crate::backend::candle::CandleOps::new,
    ))
}

/// Creates a built-in backend.
pub type MakeBackend = fn() -> Box<dyn Backend>;

/// Backends linked into this executable.
pub const BUILT_IN: &[(&str, MakeBackend)] = &[("candle", candle_backend)];

/// Plugins this repository ships, listed by `nngeo backends` even when
/// they are not built, with how to build them.
pub const SHIPPED_PLUGINS: &[&str] = &["tch", "candle-cuda", "example"];

/// How to get a plugin that is known by name but was not found.
pub fn build_hint(name: &str) -> Option<&'static str> {
    match name {
        "tch" => Some("the libtorch plugin is not built: run `scripts/setup-libtorch.sh` (add `--release` for a release `nngeo`)"),
        "candle-cuda" => Some("the candle CUDA plugin is not built: see backends/README.md (`candle-cuda`)"),
        "candle" => Some("build the candle plugin with `cargo build -p nngeo-backend-candle`"),
        "example" => Some("build the example plugin with `cargo build -p nngeo-backend-example`"),
        _ => None,
    }
}

/// Creates the backend called `name`:
/// - a built-in name (`candle`) is the backend linked into this executable;
/// - `plugin:NAME` is the plugin of that name even where a built-in one
///   exists (how the test suite runs candle through its plugin);
/// - a path to a library (`./libnngeo_backend_x.so`) loads that file;
/// - any other name is looked up among the plugins found (see
///   [`crate::plugin::discover`]), the first of that name winning.
pub fn create(
    name: &str,
    config: &crate::config::Config,
) -> Result<Box<dyn Backend>, BackendError> {
    use crate::plugin::discover;
    let unavailable = |reason: String| BackendError::Unavailable {
        name: name.into(),
        reason,
    };
    let (wanted, plugin_only) = match name.strip_prefix("plugin:") {
        Some(n) => (n, true),
        None => (name, false),
    };
    if !plugin_only {
        if let Some((_, make)) = BUILT_IN.iter().find(|(n, _)| *n == wanted) {
            return Ok(make());
        }
    }
    let as_path = std::path::Path::new(wanted);
    if wanted.contains(std::path::MAIN_SEPARATOR) || wanted.ends_with(std::env::consts::DLL_SUFFIX)
    {
        let plugin = crate::plugin::load(as_path).map_err(|e| unavailable(e.to_string()))?;
        return Ok(Box::new(plugin.create()?));
    }
    let found = discover::discover(config);
    let mut refused = Vec::new();
    for f in &found {
        match &f.result {
            Ok(p) if p.meta.name == wanted => return Ok(Box::new(p.create()?)),
            Err(e) if f.name() == wanted => refused.push(e.to_string()),
            _ => {}
        }
    }
    if !refused.is_empty() {
        return Err(unavailable(refused.join("; ")));
    }
    let mut known: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
    for f in found.iter().filter(|f| f.result.is_ok()) {
        if !known.contains(&f.name()) {
            known.push(f.name());
        }
    }
    let searched: Vec<String> = discover::search_path(config)
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let mut reason = format!(
        "no built-in backend or plugin of this name (known: {}; plugins searched in: {})",
        known.join(", "),
        searched.join(", ")
    );
    if let Some(h) = build_hint(wanted) {
        reason = format!("{h} ({reason})");
    }
    Err(unavailable(reason))
}
