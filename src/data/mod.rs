//! Dataset readers: turn files on disk (or the bundled datasets) into plain
//! host-side `f32` arrays, independent of any backend.
//!
//! Every format has two entry points: `*_info`, which reads as little as it can
//! (headers, sizes, labels) so the checker can validate an experiment without
//! loading the data, and `load_*`, which returns a fully loaded [`HostData`].
//!
//! - [`idx`]: MNIST-style IDX files (optionally gzipped).
//! - [`cifar`]: the CIFAR-10 binary batches.
//! - [`csv`]: delimited text tables, and the two-file features/target variant.
//! - [`tensors`]: safetensors files holding `x` and `y` tensors.
//! - [`digits`]: the datasets embedded in the binary (digits, diabetes).

mod cifar;
mod csv;
mod digits;
mod idx;
mod tensors;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use cifar::{cifar10_info, load_cifar10};
pub use csv::{csv_info, csv_pair_info, load_csv, load_csv_pair, ColumnRef, CsvSpec};
pub use digits::{diabetes_info, digits_info, load_diabetes, load_digits, DigitsSplit};
pub use idx::{idx_info, load_idx};
pub use tensors::{load_tensors, safetensors_keys, tensors_info};

/// What the checker needs to know about a dataset without loading it all.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataInfo {
    /// Number of examples.
    pub n: usize,
    /// Per-example feature shape, e.g. `[1, 8, 8]` or `[10]`.
    pub shape: Vec<usize>,
    /// `Some(C)` for classification (labels `0..C-1`), `None` for regression.
    pub classes: Option<usize>,
    /// 1 for class labels or scalar regression targets; `k` for `k`-column targets.
    pub target_dim: usize,
}

/// A fully loaded dataset, examples in rows.
#[derive(Clone, Debug, PartialEq)]
pub struct HostData {
    pub info: DataInfo,
    /// `n * prod(shape)` values, row-major.
    pub x: Vec<f32>,
    /// `n * target_dim` values; class ids are stored as `f32`.
    pub y: Vec<f32>,
}

/// Why a dataset could not be read. The messages are shown to users as-is.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its contents are not what the format requires.
    /// `detail` continues the sentence after the path ("is not an IDX file: ...").
    #[error("`{}` {detail}", path.display())]
    Format { path: PathBuf, detail: String },
    #[error("`{}` has no tensor named `{key}`; available: {}", path.display(), list(.available))]
    MissingKey {
        path: PathBuf,
        key: String,
        available: Vec<String>,
    },
    #[error("`{}` has no column `{column}`; available columns: {}", path.display(), list(.available))]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    #[error("`{}`: tensor `{key}` has dtype {dtype}, which is not supported (supported: F32, F64, I64, I32, U8)", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    /// Two parts of one dataset disagree (e.g. images and labels counts).
    #[error("{detail}")]
    Mismatch { detail: String },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

impl DataError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn format(path: &Path, detail: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether the file starts with the gzip magic bytes (the extension is not trusted).
fn is_gzip_file(path: &Path) -> Result<bool, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, e)),
        }
    }
    Ok(got == 2 && magic == GZIP_MAGIC)
}

/// A reader over the file's contents, decompressing gzip transparently.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let gz = is_gzip_file(path)?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = std::io::BufReader::new(file);
    Ok(if gz {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// The whole file, decompressed if it is gzipped.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    open_maybe_gz(path)?
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(path, e))?;
    Ok(out)
}

/// Decompresses `bytes` if they are gzipped, else returns them unchanged.
fn gunzip_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(path, e))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Number of classes for integer labels stored as `f32`: `max + 1`.
/// Fails on negative or fractional labels; an empty label set has 0 classes.
fn classes_from_labels(path: &Path, what: &str, labels: &[f32]) -> Result<usize, DataError> {
    let mut max: Option<f32> = None;
    for (i, &v) in labels.iter().enumerate() {
        if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
            return Err(DataError::format(
                path,
                format!(
                    "has {what} value {v} at row {i}; class labels must be non-negative integers"
                ),
            ));
        }
        max = Some(max.map_or(v, |m: f32| m.max(v)));
    }
    Ok(max.map_or(0, |m| m as usize + 1))
}
