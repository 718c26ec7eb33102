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
//! - [`synthetic`]: seeded generated datasets (blobs, teacher, noisy linear).
//! - [`transform`]: the `|>` operations (take, split, normalize, ...).
//!
//! [`load`] turns a plan's [`DataSource`] into a [`HostData`].

mod cifar;
mod csv;
mod digits;
mod idx;
pub mod synthetic;
mod tensors;
pub mod transform;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::plan::DataSource;

pub use cifar::{cifar10_info, load_cifar10};
pub use csv::{csv_info, csv_pair_info, load_csv, load_csv_pair, ColumnRef, CsvSpec};
pub use digits::{diabetes_info, digits_info, load_diabetes, load_digits, DigitsSplit};
pub use idx::{idx_info, load_idx};
pub use synthetic::{blobs, noisy_linear, teacher};
pub use tensors::{first_nonfinite, load_tensors, safetensors_keys, tensors_info};
pub use transform::apply;

pub use crate::plan::DataInfo;

/// A fully loaded dataset, examples in rows.
#[derive(Clone, Debug, PartialEq)]
pub struct HostData {
    pub info: DataInfo,
    /// `n * prod(shape)` values, row-major.
    pub x: Vec<f32>,
    /// `n * target_dim` values; class ids are stored as `f32`.
    pub y: Vec<f32>,
    /// Which labels `label_noise` changed: empty when no label noise was
    /// applied, otherwise one flag per example, `true` where the label is no
    /// longer the original one (the `flipped` group; the others are `clean`).
    pub flipped: Vec<bool>,
}

impl HostData {
    /// Values per example: the product of `info.shape`.
    pub fn features(&self) -> usize {
        self.info.shape.iter().product()
    }
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
    /// A `|>` operation cannot be applied to this data; `op` names it
    /// (`take`, `normalize`, ...), `detail` says why.
    #[error("`{op}`: {detail}")]
    Transform { op: String, detail: String },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

impl DataError {
    /// The file the error is about, where it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Format { path, .. }
            | DataError::MissingKey { path, .. }
            | DataError::MissingColumn { path, .. }
            | DataError::UnsupportedDtype { path, .. } => Some(path),
            DataError::Mismatch { .. } | DataError::Transform { .. } => None,
        }
    }

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

/// Loads (or generates) the dataset of a plan's `Data` step.
///
/// Relative paths are resolved against `base_dir` exactly as the checker
/// resolves them (the directory of the `.ngx` file, `CheckOptions::base_dir`);
/// absolute paths are used as they are. For a checked plan the result's
/// `info` equals the step's `info`.
///
/// CSV columns are stored in plans as header names, or as `#i` for the
/// 0-based column `i`, which is how they are read back here.
pub fn load(source: &DataSource, base_dir: &Path) -> Result<HostData, DataError> {
    let path = |p: &str| resolve(base_dir, p);
    match source {
        DataSource::Digits { split } => {
            let split = match split.as_str() {
                "train" => DigitsSplit::Train,
                "test" => DigitsSplit::Test,
                other => {
                    return Err(DataError::Mismatch {
                        detail: format!(
                            "the digits dataset has splits `train` and `test`, not `{other}`"
                        ),
                    })
                }
            };
            Ok(load_digits(split))
        }
        DataSource::Diabetes => Ok(load_diabetes()),
        DataSource::Idx {
            images,
            labels,
            classes,
        } => load_idx(&path(images), &path(labels), *classes),
        DataSource::Cifar10 { batches } => {
            let paths: Vec<PathBuf> = batches.iter().map(|b| path(b)).collect();
            load_cifar10(&paths)
        }
        DataSource::Csv {
            path: p,
            target,
            features,
            header,
            delimiter,
            classification,
            classes,
        } => load_csv(&CsvSpec {
            path: path(p),
            target: column_ref(target),
            features: features
                .as_ref()
                .map(|f| f.iter().map(|c| column_ref(c)).collect()),
            header: *header,
            delimiter: *delimiter,
            classification: *classification,
            classes: *classes,
        }),
        DataSource::Tensors {
            path: p,
            x,
            y,
            classification,
            classes,
        } => load_tensors(&path(p), x, y, *classification, *classes),
        DataSource::Blobs {
            n,
            classes,
            dim,
            std,
            seed,
        } => Ok(blobs(*n, *classes, *dim, *std, *seed)),
        DataSource::Teacher {
            n,
            dim,
            out,
            hidden,
            noise,
            seed,
        } => Ok(teacher(*n, *dim, *out, hidden, *noise, *seed)),
        DataSource::NoisyLinear {
            n,
            dim,
            noise,
            seed,
        } => Ok(noisy_linear(*n, *dim, *noise, *seed)),
    }
}

/// A path from an `.ngx` file: absolute as is, relative from `base_dir`
/// (the checker's rule).
fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// A CSV column as the checker stores it: `#i` is column `i`, anything else a
/// header name.
fn column_ref(c: &str) -> ColumnRef {
    match c.strip_prefix('#').map(str::parse::<usize>) {
        Some(Ok(i)) => ColumnRef::Index(i),
        _ => ColumnRef::Name(c.to_string()),
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

/// Number of classes for integer labels stored as `f32`: `declared` when
/// the experiment states it (every label must be below it), else `max + 1`.
///
/// Fails on negative or fractional labels. Without a declared count it also
/// fails where the labels cannot be a classification problem (one class) or
/// where `max + 1` is far above the number of distinct labels (a stray label
/// of 255 or 1,000,000 would otherwise make a model with that many outputs).
fn classes_from_labels(
    path: &Path,
    what: &str,
    labels: &[f32],
    declared: Option<usize>,
) -> Result<usize, DataError> {
    let mut max: Option<(f32, usize)> = None;
    let mut seen = std::collections::BTreeSet::new();
    for (i, &v) in labels.iter().enumerate() {
        // Labels are stored as f32, exact up to 2²⁴: beyond it two classes
        // could not be told apart.
        if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < (1 << 24) as f32) {
            return Err(DataError::format(
                path,
                format!(
                    "has {what} value {v} at row {i}; class labels must be non-negative integers below 2²⁴ = 16777216"
                ),
            ));
        }
        if let Some(k) = declared {
            if v as usize >= k {
                return Err(DataError::format(
                    path,
                    format!(
                        "has {what} value {v} at row {i}, but `classes = {k}` allows 0 to {}",
                        k - 1
                    ),
                ));
            }
        }
        seen.insert(v as u64);
        if max.is_none_or(|(m, _)| v > m) {
            max = Some((v, i));
        }
    }
    if let Some(k) = declared {
        return Ok(k);
    }
    let Some((top, row)) = max else {
        return Ok(0);
    };
    let (count, distinct) = (top as usize + 1, seen.len());
    if distinct < 2 {
        return Err(DataError::format(
            path,
            format!(
                "has only one class in its {what} (every label is {top}); classification needs at least two (state `classes = N` if the others are absent from this file)"
            ),
        ));
    }
    if count > (2 * distinct).max(distinct + 10) {
        return Err(DataError::format(
            path,
            format!(
                "has {what} value {top} at row {i}, which would make {count} classes from {distinct} distinct labels; state `classes = N` if that many are meant",
                i = row
            ),
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckOptions;
    use crate::plan::{Op, StepId};
    use std::collections::BTreeMap;

    fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(data);
        out
    }

    /// Writes one file of every format under `dir/sub` (paths in the .ngx
    /// file are relative to `dir`).
    fn write_files(dir: &Path) {
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        // IDX: 12 images of 3×2, labels 0..3.
        let pixels: Vec<u8> = (0..72).collect();
        let labels: Vec<u8> = (0..12).map(|i| i % 4).collect();
        std::fs::write(sub.join("img.idx"), idx_file(0x0803, &[12, 3, 2], &pixels)).unwrap();
        std::fs::write(sub.join("lab.idx"), idx_file(0x0801, &[12], &labels)).unwrap();
        // CIFAR-10: 10 records, label i.
        let mut cifar = Vec::new();
        for i in 0..10u8 {
            cifar.push(i);
            cifar.extend(std::iter::repeat_n(i, 3072));
        }
        std::fs::write(sub.join("batch.bin"), cifar).unwrap();
        // CSV: 8 rows, columns a, b, label, c.
        let mut csv = String::from("a,b,label,c\n");
        for i in 0..8 {
            csv += &format!("{i},{},{},{}\n", i * i, i % 2, 0.5 * i as f64);
        }
        std::fs::write(sub.join("t.csv"), csv).unwrap();
        // safetensors: x [6, 2, 2] f32, y [6] i64 in 0..3.
        let x: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let y: Vec<u8> = (0..6).flat_map(|i| (i as i64 % 3).to_le_bytes()).collect();
        let views = vec![
            (
                "inputs".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![6, 2, 2], &x)
                    .unwrap(),
            ),
            (
                "labels".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![6], &y).unwrap(),
            ),
        ];
        std::fs::write(
            sub.join("d.safetensors"),
            safetensors::serialize(views, &None).unwrap(),
        )
        .unwrap();
    }

    const SOURCE: &str = r#"
experiment every_source {
  seed = 0
  backend = candle
  device = cpu
  dtype = f32
  out = "runs/x"
}

data dtrain = digits(split = train) |> normalize
data dtest = digits(split = test) |> normalize(like = dtrain)
data dprobe = dtrain |> take(10, per_class, seed = 1)
data dia = diabetes() |> scale(0.5) |> take(100, random, seed = 4)
data mn = idx(images = "sub/img.idx", labels = "sub/lab.idx") |> take(2, per_class, seed = 3)
data cf = cifar10("sub/batch.bin") |> onehot
data tab = csv(path = "sub/t.csv", target = 2, features = ["a", "c"], task = classification)
data tab2 = csv(path = "sub/t.csv", target = "c", task = regression) |> take(5)
data st = tensors(path = "sub/d.safetensors", x = "inputs", y = "labels")
data bl = blobs(n = 90, classes = 3, dim = 4, std = 0.5, seed = 1)
data tr, te = bl |> split(0.7, seed = 2)
data noisy = tr |> label_noise(0.2, seed = 5) |> take(3, per_class, seed = 1) |> onehot
data tea = teacher(n = 50, dim = 3, out = 2, hidden = [5, 4], noise = 0.05, seed = 2)
data lin = noisy_linear(n = 40, dim = 5, noise = 0.2, seed = 3) |> normalize
"#;

    /// Compiles `SOURCE` against files in a temporary directory and runs
    /// every data step with `load`/`apply`: each result's info must be the
    /// info the checker put in the plan.
    #[test]
    fn loaded_info_matches_the_checker() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let opts = CheckOptions {
            base_dir: dir.path().to_path_buf(),
            ..CheckOptions::default()
        };
        let plan = crate::compile_source(SOURCE, &opts).unwrap_or_else(|d| panic!("{d:?}"));
        let mut done: BTreeMap<StepId, HostData> = BTreeMap::new();
        let mut by_name: BTreeMap<String, StepId> = BTreeMap::new();
        let (mut sources, mut transforms) = (0, 0);
        for step in &plan.steps {
            let (name, data, info) = match &step.op {
                Op::Data { name, source, info } => {
                    sources += 1;
                    (name, load(source, dir.path()).unwrap(), info)
                }
                Op::Transform {
                    name,
                    input,
                    transform,
                    info,
                } => {
                    transforms += 1;
                    let like = match transform {
                        crate::plan::Transform::Normalize { like: Some(l), .. } => Some(&done[l]),
                        _ => None,
                    };
                    (
                        name,
                        transform::apply(transform, &done[input], like).unwrap(),
                        info,
                    )
                }
                _ => continue,
            };
            assert_eq!(&data.info, info, "step {name}");
            assert_eq!(data.x.len(), info.n * info.shape.iter().product::<usize>());
            assert_eq!(data.y.len(), info.n * info.target_dim);
            by_name.insert(name.clone(), step.id);
            done.insert(step.id, data);
        }
        assert_eq!((sources, transforms), (11, 14));
        let get = |n: &str| &done[&by_name[n]];
        // Relative paths were read from `dir`, with the right columns.
        assert_eq!(get("tab").x[..4], [0.0, 0.0, 1.0, 0.5]);
        assert_eq!(get("tab").y[..3], [0.0, 1.0, 0.0]);
        assert_eq!(get("tab2").y, [0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!(get("st").y, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        assert_eq!(
            get("cf").y[10..20],
            [0., 1., 0., 0., 0., 0., 0., 0., 0., 0.]
        );
        // Label noise flags survive later steps.
        assert_eq!(get("noisy").flipped.len(), 9);
        assert!(get("tr").flipped.is_empty());
        // Both parts of the split partition the blobs.
        assert_eq!(get("tr").info.n + get("te").info.n, 90);
    }

    #[test]
    fn relative_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let rel = DataSource::Tensors {
            path: "sub/d.safetensors".into(),
            x: "inputs".into(),
            y: "labels".into(),
            classification: true,
            classes: None,
        };
        let a = load(&rel, dir.path()).unwrap();
        let abs = DataSource::Tensors {
            path: dir.path().join("sub/d.safetensors").display().to_string(),
            x: "inputs".into(),
            y: "labels".into(),
            classification: true,
            classes: None,
        };
        assert_eq!(load(&abs, Path::new("/nonexistent")).unwrap(), a);
        // Relative to base_dir, not to the working directory.
        let err = load(&rel, Path::new("/nonexistent")).unwrap_err();
        assert!(
            matches!(err, DataError::Io { ref path, .. } if path == Path::new("/nonexistent/sub/d.safetensors")),
            "{err}"
        );
    }

    #[test]
    fn csv_columns_by_name_and_index() {
        assert_eq!(column_ref("#3"), ColumnRef::Index(3));
        assert_eq!(column_ref("label"), ColumnRef::Name("label".into()));
        assert_eq!(column_ref("#x"), ColumnRef::Name("#x".into()));
        assert_eq!(column_ref("7"), ColumnRef::Name("7".into()));
    }

    #[test]
    fn synthetic_sources_dispatch() {
        let src = DataSource::Blobs {
            n: 10,
            classes: 2,
            dim: 3,
            std: 1.0,
            seed: 4,
        };
        assert_eq!(load(&src, Path::new(".")).unwrap(), blobs(10, 2, 3, 1.0, 4));
        let bad = DataSource::Digits {
            split: "valid".into(),
        };
        assert!(load(&bad, Path::new(".")).is_err());
    }
}
