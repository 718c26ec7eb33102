//! safetensors files holding a feature tensor `x` (`[n, ...]`) and a target
//! tensor `y` (`[n]` or `[n, k]`). Only the header and the two named tensors
//! are read, never the whole file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{classes_from_labels, DataError, DataInfo, HostData};

/// Headers larger than this are rejected as corrupt (the reference
/// implementation uses the same limit).
const MAX_HEADER: u64 = 100_000_000;

/// Name, shape and dtype (e.g. `"F32"`) of every tensor, sorted by name.
/// Reads only the 8-byte length prefix and the JSON header.
pub fn safetensors_keys(path: &Path) -> Result<Vec<(String, Vec<usize>, String)>, DataError> {
    Ok(Header::read(path)?
        .entries
        .into_iter()
        .map(|e| (e.name, e.shape, e.dtype))
        .collect())
}

pub fn tensors_info(
    path: &Path,
    x_key: &str,
    y_key: &str,
    classification: bool,
    classes: Option<usize>,
) -> Result<DataInfo, DataError> {
    // The values are read (and dropped) so that `check` catches what
    // `exec` would: non-finite values and labels that are no classes.
    load_tensors(path, x_key, y_key, classification, classes).map(|d| d.info)
}

/// Loads `x` and `y`, converting F32, F64, I64, I32 and U8 values to `f32`.
pub fn load_tensors(
    path: &Path,
    x_key: &str,
    y_key: &str,
    classification: bool,
    classes: Option<usize>,
) -> Result<HostData, DataError> {
    let header = Header::read(path)?;
    let (x, y) = header.pick(x_key, y_key)?;
    let mut info = header.info(x, y, classification)?;
    let y_values = header.load(y)?;
    let x_values = header.load(x)?;
    header.finite(x, &x_values)?;
    header.finite(y, &y_values)?;
    if classification {
        info.classes = Some(classes_from_labels(
            path,
            &format!("tensor `{y_key}`"),
            &y_values,
            classes,
        )?);
    }
    Ok(HostData {
        info,
        x: x_values,
        y: y_values,
        flipped: Vec::new(),
    })
}

/// The first value of tensor `key` that is NaN or infinite (its flat
/// index), judged in the tensor's own dtype; integer tensors have none.
pub fn first_nonfinite(path: &Path, key: &str) -> Result<Option<usize>, DataError> {
    let header = Header::read(path)?;
    let entry = header.entry(key)?;
    let bytes = header.bytes(entry)?;
    Ok(match entry.dtype.as_str() {
        "F64" => bytes
            .chunks_exact(8)
            .position(|c| !f64::from_le_bytes(c.try_into().expect("8 bytes")).is_finite()),
        "F32" => bytes
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes(c.try_into().expect("4 bytes")).is_finite()),
        _ => None,
    })
}

struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    /// Byte range within the data section.
    start: u64,
    end: u64,
}

struct Header<'a> {
    path: &'a Path,
    entries: Vec<Entry>,
    /// Offset of the data section from the start of the file.
    data_start: u64,
}

fn dtype_size(dtype: &str) -> Option<usize> {
    match dtype {
        "F64" | "I64" => Some(8),
        "F32" | "I32" => Some(4),
        "U8" => Some(1),
        _ => None,
    }
}

impl<'a> Header<'a> {
    fn read(path: &'a Path) -> Result<Self, DataError> {
        let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let mut prefix = [0u8; 8];
        read_exact(&mut file, path, &mut prefix, "the 8-byte header length")?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER || header_len > file_len - 8 {
            return Err(DataError::format(
                path,
                format!(
                    "is not a safetensors file: header length {header_len} does not fit in a file of {file_len} bytes"
                ),
            ));
        }
        let mut json = vec![0u8; header_len as usize];
        read_exact(&mut file, path, &mut json, "the JSON header")?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| {
                DataError::format(
                    path,
                    format!("is not a safetensors file: its header is not a JSON object ({e})"),
                )
            })?;
        let data_len = file_len - 8 - header_len;
        let mut entries = Vec::with_capacity(map.len());
        for (name, value) in map {
            if name == "__metadata__" {
                continue;
            }
            let entry = parse_entry(path, name, &value)?;
            if entry.end > data_len {
                return Err(DataError::format(
                    path,
                    format!(
                        "is truncated: tensor `{}` ends at byte {} of the data section, which has only {data_len} bytes",
                        entry.name, entry.end
                    ),
                ));
            }
            entries.push(entry);
        }
        check_layout(path, &mut entries, data_len)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Header {
            path,
            entries,
            data_start: 8 + header_len,
        })
    }

    fn pick(&self, x_key: &str, y_key: &str) -> Result<(&Entry, &Entry), DataError> {
        Ok((self.entry(x_key)?, self.entry(y_key)?))
    }

    fn entry(&self, key: &str) -> Result<&Entry, DataError> {
        let entry =
            self.entries
                .iter()
                .find(|e| e.name == key)
                .ok_or_else(|| DataError::MissingKey {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    available: self.entries.iter().map(|e| e.name.clone()).collect(),
                })?;
        if dtype_size(&entry.dtype).is_none() {
            return Err(DataError::UnsupportedDtype {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                dtype: entry.dtype.clone(),
            });
        }
        Ok(entry)
    }

    /// Shapes only; `classes` is left for the caller, which must read `y`.
    fn info(&self, x: &Entry, y: &Entry, classification: bool) -> Result<DataInfo, DataError> {
        let Some((&n, rest)) = x.shape.split_first() else {
            return Err(DataError::format(
                self.path,
                format!(
                    "has a scalar tensor `{}`; features need shape [n, ...] with one row per example",
                    x.name
                ),
            ));
        };
        let target_dim = match y.shape.as_slice() {
            [m] if *m == n => 1,
            [m, k] if *m == n => *k,
            [m] | [m, _] => {
                return Err(DataError::Mismatch {
                    detail: format!(
                        "`{}`: tensor `{}` has {n} rows but tensor `{}` has {m}",
                        self.path.display(),
                        x.name,
                        y.name
                    ),
                })
            }
            other => {
                return Err(DataError::format(
                    self.path,
                    format!(
                        "has tensor `{}` of shape {other:?}; targets need shape [n] or [n, k]",
                        y.name
                    ),
                ))
            }
        };
        if classification && target_dim != 1 {
            return Err(DataError::format(
                self.path,
                format!(
                    "has tensor `{}` of shape {:?}; class labels need shape [n] or [n, 1]",
                    y.name, y.shape
                ),
            ));
        }
        Ok(DataInfo {
            n,
            // A tensor of shape [n] holds one scalar feature per example.
            shape: if rest.is_empty() {
                vec![1]
            } else {
                rest.to_vec()
            },
            classes: None,
            target_dim,
        })
    }

    /// Fails on the first NaN or infinity in `values` (of `entry`), naming
    /// the tensor and the example (its row).
    fn finite(&self, entry: &Entry, values: &[f32]) -> Result<(), DataError> {
        let Some(i) = values.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let row = entry.shape.iter().skip(1).product::<usize>().max(1);
        Err(DataError::format(
            self.path,
            format!(
                "has {} in tensor `{}` at row {} (flat index {i}); every value must be a finite number",
                values[i],
                entry.name,
                i / row
            ),
        ))
    }

    /// Reads one tensor's bytes from the file.
    fn bytes(&self, entry: &Entry) -> Result<Vec<u8>, DataError> {
        let path = self.path;
        let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
        file.seek(SeekFrom::Start(self.data_start + entry.start))
            .map_err(|e| DataError::io(path, e))?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        read_exact(
            &mut file,
            path,
            &mut bytes,
            &format!("the data of tensor `{}`", entry.name),
        )?;
        Ok(bytes)
    }

    /// Reads one tensor's bytes from the file and converts them to `f32`.
    fn load(&self, entry: &Entry) -> Result<Vec<f32>, DataError> {
        let path = self.path;
        let bytes = self.bytes(entry)?;
        Ok(match entry.dtype.as_str() {
            "F32" => convert::<4>(&bytes, f32::from_le_bytes),
            "F64" => convert::<8>(&bytes, |b| f64::from_le_bytes(b) as f32),
            "I64" => convert::<8>(&bytes, |b| i64::from_le_bytes(b) as f32),
            "I32" => convert::<4>(&bytes, |b| i32::from_le_bytes(b) as f32),
            "U8" => bytes.iter().map(|&b| f32::from(b)).collect(),
            other => {
                return Err(DataError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: entry.name.clone(),
                    dtype: other.to_string(),
                })
            }
        })
    }
}

/// The safetensors layout rule: tensors tile the data section, each one
/// starting where the previous ends (by offset), none overlapping, the last
/// ending at the end. Names both tensors where two overlap or leave a gap.
/// Sorts `entries` by offset.
fn check_layout(path: &Path, entries: &mut [Entry], data_len: u64) -> Result<(), DataError> {
    entries.sort_by_key(|e| (e.start, e.end));
    let mut prev: Option<&Entry> = None;
    for e in entries.iter() {
        let end = prev.map_or(0, |p| p.end);
        if e.start < end {
            let p = prev.expect("only a later tensor can overlap");
            return Err(DataError::format(
                path,
                format!(
                    "is corrupt: tensor `{}` (bytes {}..{}) overlaps tensor `{}` (bytes {}..{})",
                    e.name, e.start, e.end, p.name, p.start, p.end
                ),
            ));
        }
        if e.start > end {
            let after = prev.map_or("the start of the data".to_string(), |p| {
                format!("tensor `{}`", p.name)
            });
            return Err(DataError::format(
                path,
                format!(
                    "is corrupt: bytes {end}..{} between {after} and tensor `{}` belong to no tensor",
                    e.start, e.name
                ),
            ));
        }
        prev = Some(e);
    }
    let end = prev.map_or(0, |p| p.end);
    if end != data_len {
        return Err(DataError::format(
            path,
            format!(
                "is corrupt: its tensors end at byte {end} of a data section of {data_len} bytes"
            ),
        ));
    }
    Ok(())
}

fn convert<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk has N bytes")))
        .collect()
}

fn read_exact(file: &mut File, path: &Path, buf: &mut [u8], what: &str) -> Result<(), DataError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::format(path, format!("is truncated: it ends inside {what}"))
        } else {
            DataError::io(path, e)
        }
    })
}

fn parse_entry(path: &Path, name: String, value: &serde_json::Value) -> Result<Entry, DataError> {
    let bad = |why: &str| {
        DataError::format(
            path,
            format!("has a malformed safetensors header entry for `{name}`: {why}"),
        )
    };
    let dtype = value
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("no string `dtype`"))?
        .to_string();
    let shape = value
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| bad("`shape` is not a list of non-negative integers"))?;
    let offsets = value
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .and_then(|o| match o.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| bad("`data_offsets` is not a pair of integers"))?;
    let (start, end) = offsets;
    if end < start {
        return Err(bad("`data_offsets` end before they start"));
    }
    if let Some(size) = dtype_size(&dtype) {
        let bytes = shape
            .iter()
            .try_fold(size as u64, |a, &d| a.checked_mul(d as u64));
        if bytes != Some(end - start) {
            let needs = bytes.map_or("more than 2⁶⁴".to_string(), |b| b.to_string());
            return Err(bad(&format!(
                "shape {shape:?} of {dtype} needs {needs} bytes but `data_offsets` span {}",
                end - start
            )));
        }
    }
    Ok(Entry {
        name,
        dtype,
        shape,
        start,
        end,
    })
}
