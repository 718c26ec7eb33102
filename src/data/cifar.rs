//! CIFAR-10, binary version: each batch file is a sequence of 3073-byte records,
//! one label byte (0..9) followed by 3072 pixel bytes (1024 red, 1024 green,
//! 1024 blue, each a row-major 32x32 plane). Gzipped batches are also read.

use std::path::{Path, PathBuf};

use super::{is_gzip_file, read_maybe_gz, DataError, DataInfo, HostData};

const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 1 + PIXELS;
const CLASSES: usize = 10;

/// Counts the records from the file sizes (uncompressed batches are not read).
pub fn cifar10_info(batches: &[PathBuf]) -> Result<DataInfo, DataError> {
    check_nonempty(batches)?;
    let mut n = 0;
    for path in batches {
        // Every record's label byte is read here too, so that `check`
        // refuses a file `exec` would (a CIFAR-100 file, a wrong format).
        if is_gzip_file(path)? {
            let bytes = read_maybe_gz(path)?;
            let records = records_in(path, bytes.len() as u64)?;
            for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
                label_of(path, i, record[0])?;
            }
            n += records;
        } else {
            use std::io::{Read, Seek, SeekFrom};
            let len = std::fs::metadata(path)
                .map_err(|e| DataError::io(path, e))?
                .len();
            let records = records_in(path, len)?;
            let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let mut byte = [0u8; 1];
            for i in 0..records {
                f.seek(SeekFrom::Start((i * RECORD) as u64))
                    .and_then(|_| f.read_exact(&mut byte))
                    .map_err(|e| DataError::io(path, e))?;
                label_of(path, i, byte[0])?;
            }
            n += records;
        }
    }
    Ok(info(n))
}

/// A record's label, refused beyond CIFAR-10's ten classes.
fn label_of(path: &std::path::Path, record: usize, label: u8) -> Result<f32, DataError> {
    if usize::from(label) >= CLASSES {
        return Err(DataError::format(
            path,
            format!(
                "has label {label} in record {record}; CIFAR-10 labels are 0..9 (is this a CIFAR-100 file?)"
            ),
        ));
    }
    Ok(f32::from(label))
}

/// Loads all batches in order; pixel values are raw `0..255` as `f32`, in
/// `[3, 32, 32]` (channel, row, column) order per example.
pub fn load_cifar10(batches: &[PathBuf]) -> Result<HostData, DataError> {
    check_nonempty(batches)?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for path in batches {
        let bytes = read_maybe_gz(path)?;
        let n = records_in(path, bytes.len() as u64)?;
        x.reserve(n * PIXELS);
        y.reserve(n);
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            y.push(label_of(path, i, record[0])?);
            x.extend(record[1..].iter().map(|&p| f32::from(p)));
        }
    }
    Ok(HostData {
        info: info(y.len()),
        x,
        y,
        flipped: Vec::new(),
    })
}

fn info(n: usize) -> DataInfo {
    DataInfo {
        n,
        shape: vec![3, 32, 32],
        classes: Some(CLASSES),
        target_dim: 1,
    }
}

fn check_nonempty(batches: &[PathBuf]) -> Result<(), DataError> {
    if batches.is_empty() {
        return Err(DataError::Mismatch {
            detail: "no CIFAR-10 batch files were given".to_string(),
        });
    }
    Ok(())
}

fn records_in(path: &Path, len: u64) -> Result<usize, DataError> {
    if len == 0 {
        return Err(DataError::format(
            path,
            "is empty; expected CIFAR-10 records",
        ));
    }
    if !len.is_multiple_of(RECORD as u64) {
        return Err(DataError::format(
            path,
            format!(
                "is not a CIFAR-10 binary batch: its size, {len} bytes, is not a multiple of the record size {RECORD} (1 label byte + 3072 pixel bytes)"
            ),
        ));
    }
    Ok((len / RECORD as u64) as usize)
}
