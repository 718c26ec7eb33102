//! MNIST-style IDX files: an images file (magic `0x00000803`, u8 `[n, h, w]`)
//! and a labels file (magic `0x00000801`, u8 `[n]`), each optionally gzipped.

use std::io::Read;
use std::path::Path;

use super::{
    classes_from_labels, is_gzip_file, open_maybe_gz, read_maybe_gz, DataError, DataInfo, HostData,
};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads the shape of the dataset from the headers; the labels file is read
/// in full (it is small) to count the classes as `max label + 1` (or to
/// check them against the stated `classes`). A gzipped images file is
/// decompressed to its end without being kept, so that a truncated archive
/// fails here and not at run time.
pub fn idx_info(
    images: &Path,
    labels: &Path,
    classes: Option<usize>,
) -> Result<DataInfo, DataError> {
    let image_dims = {
        let mut reader = open_maybe_gz(images)?;
        let dims = read_header(&mut *reader, images, IMAGES_MAGIC)?;
        let data_len = if is_gzip_file(images)? {
            std::io::copy(&mut *reader, &mut std::io::sink())
                .map_err(|e| DataError::io(images, e))?
        } else {
            std::fs::metadata(images)
                .map_err(|e| DataError::io(images, e))?
                .len()
                .saturating_sub(header_len(&dims) as u64)
        };
        check_len(images, &dims, data_len)?;
        dims
    };
    let label_bytes = read_maybe_gz(labels)?;
    let (label_dims, label_data) = parse(labels, &label_bytes, LABELS_MAGIC)?;
    info_from(
        images,
        &image_dims,
        labels,
        &label_dims,
        label_data,
        classes,
    )
}

/// Loads images (raw u8 pixel values as `f32`, not rescaled) and labels.
pub fn load_idx(
    images: &Path,
    labels: &Path,
    classes: Option<usize>,
) -> Result<HostData, DataError> {
    let image_bytes = read_maybe_gz(images)?;
    let label_bytes = read_maybe_gz(labels)?;
    from_bytes(images, &image_bytes, labels, &label_bytes, classes)
}

/// Builds a dataset from the (already decompressed) contents of both files;
/// the paths are only used in error messages.
pub(super) fn from_bytes(
    images: &Path,
    image_bytes: &[u8],
    labels: &Path,
    label_bytes: &[u8],
    classes: Option<usize>,
) -> Result<HostData, DataError> {
    let (image_dims, pixels) = parse(images, image_bytes, IMAGES_MAGIC)?;
    let (label_dims, label_data) = parse(labels, label_bytes, LABELS_MAGIC)?;
    let info = info_from(
        images,
        &image_dims,
        labels,
        &label_dims,
        label_data,
        classes,
    )?;
    Ok(HostData {
        info,
        x: pixels.iter().map(|&p| f32::from(p)).collect(),
        y: label_data.iter().map(|&l| f32::from(l)).collect(),
        flipped: Vec::new(),
    })
}

fn info_from(
    images: &Path,
    image_dims: &[usize],
    labels: &Path,
    label_dims: &[usize],
    label_data: &[u8],
    declared: Option<usize>,
) -> Result<DataInfo, DataError> {
    let n = image_dims[0];
    if label_dims[0] != n {
        return Err(DataError::Mismatch {
            detail: format!(
                "`{}` has {n} images but `{}` has {} labels",
                images.display(),
                labels.display(),
                label_dims[0]
            ),
        });
    }
    let labels_f32: Vec<f32> = label_data.iter().map(|&l| f32::from(l)).collect();
    let classes = classes_from_labels(labels, "label", &labels_f32, declared)?;
    Ok(DataInfo {
        n,
        shape: vec![1, image_dims[1], image_dims[2]],
        classes: Some(classes),
        target_dim: 1,
    })
}

fn header_len(dims: &[usize]) -> usize {
    4 + 4 * dims.len()
}

fn expected_ndim(magic: u32) -> usize {
    (magic & 0xff) as usize
}

fn kind(magic: u32) -> &'static str {
    if magic == IMAGES_MAGIC {
        "images"
    } else {
        "labels"
    }
}

fn check_magic(path: &Path, found: u32, expected: u32) -> Result<(), DataError> {
    if found == expected {
        return Ok(());
    }
    let hint = if found == IMAGES_MAGIC || found == LABELS_MAGIC {
        format!(
            " (it looks like an IDX {} file; were the images and labels swapped?)",
            kind(found)
        )
    } else if found >> 8 == 0x08 {
        " (an IDX file of u8 values, but with the wrong number of dimensions)".to_string()
    } else if (found >> 8) & 0xff != 0 && found >> 16 == 0 {
        " (an IDX file, but only unsigned-byte (0x08) data is supported)".to_string()
    } else {
        String::new()
    };
    Err(DataError::format(
        path,
        format!("is not an IDX file: magic number 0x{found:08x}, expected 0x{expected:08x}{hint}"),
    ))
}

/// Reads magic and dimensions from the start of the stream.
fn read_header(reader: &mut dyn Read, path: &Path, magic: u32) -> Result<Vec<usize>, DataError> {
    let mut word = [0u8; 4];
    read_word(reader, path, &mut word, "its magic number")?;
    check_magic(path, u32::from_be_bytes(word), magic)?;
    let mut dims = Vec::with_capacity(expected_ndim(magic));
    for i in 0..expected_ndim(magic) {
        read_word(reader, path, &mut word, &format!("dimension {i}"))?;
        dims.push(u32::from_be_bytes(word) as usize);
    }
    Ok(dims)
}

fn read_word(
    reader: &mut dyn Read,
    path: &Path,
    word: &mut [u8; 4],
    what: &str,
) -> Result<(), DataError> {
    reader.read_exact(word).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::format(path, format!("ends before {what} of its IDX header"))
        } else {
            DataError::io(path, e)
        }
    })
}

fn check_len(path: &Path, dims: &[usize], data_len: u64) -> Result<(), DataError> {
    // A header's dimensions can multiply past 64 bits: no file holds that.
    let expected = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    if expected != Some(data_len) {
        let expected = expected.map_or("more than 2⁶⁴".to_string(), |e| e.to_string());
        let dims_text: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(DataError::format(
            path,
            format!(
                "has {data_len} bytes of data after its IDX header, but its shape [{}] needs {expected}",
                dims_text.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Parses a whole (decompressed) IDX file: dimensions and the data bytes.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let mut reader = bytes;
    let dims = read_header(&mut reader, path, magic)?;
    check_len(path, &dims, reader.len() as u64)?;
    Ok((dims, reader))
}
