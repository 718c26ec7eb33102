//! `nngeo.toml`: settings of a machine or a project, found in the current
//! folder or the nearest one above it (or at `$NNGEO_CONFIG`).
//!
//! ```toml
//! [plugins]
//! paths = ["/opt/nngeo/plugins", "../backends-build"]  # files or folders
//!
//! [defaults]
//! backend = "tch"    # used instead of the file's `backend`
//! device = "cuda"
//!
//! [data]
//! paths = ["/data/datasets"]   # where cifar10(split = ...) and mnist(...) look
//!
//! [slurm]                      # `nngeo exec FILE --on slurm`
//! partition = "gpu"
//! time = "04:00:00"
//! cpus = 8                     # --cpus-per-task
//! mem = "32G"                  # default: the largest shard's estimate
//! gpus = 1                     # --gres=gpu:1
//! account = "my-lab"
//! extra = ["--qos=normal"]     # more #SBATCH lines
//! ```
//! Relative paths are relative to the `nngeo.toml` that names them.
//! Precedence: command-line flags, then `[defaults]`, then the `.ngx`
//! file's header: the machine decides where an experiment runs, the file
//! what it computes.

use crate::plan::Dtype;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "nngeo.toml";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub slurm: SlurmSection,
    /// The file this came from (none: no `nngeo.toml` found).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Plugin files, or folders searched for `*nngeo_backend_*` libraries.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

/// Where standard datasets (CIFAR-10, MNIST) are looked for by name.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

/// Resources of the job array `--on slurm` submits (each overridable by
/// the flag of the same name).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    pub partition: Option<String>,
    /// Wall-time limit per task, as sbatch reads it (`04:00:00`, `90`).
    pub time: Option<String>,
    /// CPUs per task; the task's compute threads follow it.
    pub cpus: Option<u32>,
    /// Memory per task as sbatch reads it (`32G`); default: the largest
    /// shard's estimated peak.
    pub mem: Option<String>,
    /// GPUs per task (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    pub account: Option<String>,
    /// Further `#SBATCH` lines, e.g. `--qos=normal`.
    #[serde(default)]
    pub extra: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub backend: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<Dtype>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the line and column and shows the line.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The nearest `nngeo.toml` at or above `start`.
pub fn find(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
}

/// Reads one `nngeo.toml`, resolving its relative plugin paths.
pub fn read(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let mut c: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in c.plugins.paths.iter_mut().chain(c.data.paths.iter_mut()) {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    c.path = Some(path.into());
    Ok(c)
}

/// `$NNGEO_CONFIG` if set, else the nearest `nngeo.toml` above the current
/// folder, else the empty configuration.
pub fn load() -> Result<Config, ConfigError> {
    if let Some(p) = std::env::var_os("NNGEO_CONFIG").filter(|p| !p.is_empty()) {
        return read(Path::new(&p));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match find(&cwd) {
        Some(p) => read(&p),
        None => Ok(Config::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plugins_and_defaults_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(
            &p,
            "[plugins]\npaths = [\"plugins\", \"/abs/lib.so\"]\n[defaults]\nbackend = \"tch\"\ndevice = \"cuda\"\ndtype = \"f64\"\n",
        )
        .unwrap();
        let c = read(&p).unwrap();
        assert_eq!(
            c.plugins.paths,
            vec![dir.path().join("plugins"), PathBuf::from("/abs/lib.so")]
        );
        assert_eq!(c.defaults.backend.as_deref(), Some("tch"));
        assert_eq!(c.defaults.device.as_deref(), Some("cuda"));
        assert_eq!(c.defaults.dtype, Some(Dtype::F64));
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(find(&sub), Some(p));
    }

    #[test]
    fn a_typo_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, "[defaults]\nbackend = \"tch\"\ndevcie = \"cuda\"\n").unwrap();
        let msg = read(&p).unwrap_err().to_string();
        assert!(msg.contains(FILE_NAME), "{msg}");
        assert!(msg.contains("line 3, column 1"), "{msg}");
        assert!(msg.contains("devcie"), "{msg}");
    }
}
