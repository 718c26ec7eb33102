//! Where plugins are found, in order of precedence:
//! 1. `$NNGEO_PLUGIN_PATH` (entries separated like `$PATH`),
//! 2. `[plugins] paths` of `nngeo.toml`,
//! 3. the folder of the `nngeo` executable (so `cargo build -p
//!    nngeo-backend-X` puts a plugin where the matching `nngeo` finds it).
//!
//! An entry is a library file (loaded whatever its name) or a folder, where
//! files named `libnngeo_backend_*.so` (`.dylib`, or `nngeo_backend_*.dll`)
//! are plugins. The first plugin of a name wins; later ones are shadowed.

use super::host::{load, LoadError, Plugin};
use crate::config::Config;
use std::path::{Path, PathBuf};

/// Where a candidate came from (shown by `nngeo backends`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    EnvVar,
    ConfigFile(PathBuf),
    ExeDir,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::EnvVar => write!(f, "$NNGEO_PLUGIN_PATH"),
            Origin::ConfigFile(p) => write!(f, "{}", p.display()),
            Origin::ExeDir => write!(f, "next to the nngeo executable"),
        }
    }
}

/// A library that looked like a plugin, and what loading it gave.
pub struct Found {
    pub path: PathBuf,
    pub origin: Origin,
    pub result: Result<Plugin, LoadError>,
}

impl Found {
    /// The backend name: from the table if it loaded, else guessed from the
    /// file name (`libnngeo_backend_candle_cuda.so` → `candle-cuda`).
    pub fn name(&self) -> String {
        match &self.result {
            Ok(p) => p.meta.name.clone(),
            Err(_) => name_from_file(&self.path).unwrap_or_else(|| self.path.display().to_string()),
        }
    }
}

const PREFIX: &str = if cfg!(windows) {
    "nngeo_backend_"
} else {
    "libnngeo_backend_"
};

/// `libnngeo_backend_candle_cuda.so` → `candle-cuda`.
pub fn name_from_file(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_prefix(PREFIX)?
        .strip_suffix(std::env::consts::DLL_SUFFIX)?;
    Some(stem.replace('_', "-"))
}

/// The file name a plugin called `name` is built as.
pub fn file_name(name: &str) -> String {
    format!(
        "{PREFIX}{}{}",
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// The search path, in precedence order.
pub fn search_path(config: &Config) -> Vec<(PathBuf, Origin)> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os("NNGEO_PLUGIN_PATH") {
        out.extend(
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| (p, Origin::EnvVar)),
        );
    }
    if let Some(cfg) = &config.path {
        out.extend(
            config
                .plugins
                .paths
                .iter()
                .map(|p| (p.clone(), Origin::ConfigFile(cfg.clone()))),
        );
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push((dir, Origin::ExeDir));
    }
    out
}

/// Every plugin library on the search path, loaded (or refused) in order.
/// A file reached twice (e.g. both by the variable and next to the
/// executable) is listed once.
pub fn discover(config: &Config) -> Vec<Found> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for (entry, origin) in search_path(config) {
        let files: Vec<PathBuf> = if entry.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&entry)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| name_from_file(p).is_some())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        } else if entry.exists() || origin != Origin::ExeDir {
            // A missing file that was named explicitly is reported, so a
            // typo in the configuration shows up in `nngeo backends`.
            vec![entry]
        } else {
            Vec::new()
        };
        for path in files {
            let key = path.canonicalize().unwrap_or_else(|_| path.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let result = load(&path);
            out.push(Found {
                path,
                origin: origin.clone(),
                result,
            });
        }
    }
    out
}
