//! The datasets bundled with nngeo, embedded in the binary so they work from
//! any working directory: the 8x8 handwritten digits (IDX) and the diabetes
//! regression data (gzipped text). See `data/README.md` for their sources.

use std::path::Path;

use super::{csv, gunzip_bytes, idx, DataInfo, HostData};

/// Which part of the digits dataset: within each class, every fifth example
/// from the fifth on is in the test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigitsSplit {
    Train,
    Test,
}

const TRAIN_IMAGES: &[u8] = include_bytes!("../../data/digits/train-images-idx3-ubyte");
const TRAIN_LABELS: &[u8] = include_bytes!("../../data/digits/train-labels-idx1-ubyte");
const TEST_IMAGES: &[u8] = include_bytes!("../../data/digits/test-images-idx3-ubyte");
const TEST_LABELS: &[u8] = include_bytes!("../../data/digits/test-labels-idx1-ubyte");

const DIABETES_X: &[u8] = include_bytes!("../../data/diabetes/diabetes_data_raw.csv.gz");
const DIABETES_Y: &[u8] = include_bytes!("../../data/diabetes/diabetes_target.csv.gz");

/// n = 1442 (train) or 355 (test), shape `[1, 8, 8]`, 10 classes.
pub fn digits_info(split: DigitsSplit) -> DataInfo {
    DataInfo {
        n: match split {
            DigitsSplit::Train => 1442,
            DigitsSplit::Test => 355,
        },
        shape: vec![1, 8, 8],
        classes: Some(10),
        target_dim: 1,
    }
}

/// Pixel values are the raw integers 0..=16 as `f32` (not rescaled).
pub fn load_digits(split: DigitsSplit) -> HostData {
    let (name, images, labels) = match split {
        DigitsSplit::Train => ("train", TRAIN_IMAGES, TRAIN_LABELS),
        DigitsSplit::Test => ("test", TEST_IMAGES, TEST_LABELS),
    };
    let images_path = format!("<bundled>/digits/{name}-images-idx3-ubyte");
    let labels_path = format!("<bundled>/digits/{name}-labels-idx1-ubyte");
    idx::from_bytes(
        Path::new(&images_path),
        images,
        Path::new(&labels_path),
        labels,
        Some(10),
    )
    .expect("the bundled digits data is valid IDX")
}

/// n = 442, shape `[10]` (age, sex, bmi, bp, s1..s6; raw, unscaled), regression.
pub fn diabetes_info() -> DataInfo {
    DataInfo {
        n: 442,
        shape: vec![10],
        classes: None,
        target_dim: 1,
    }
}

/// Features and target (disease progression after one year), unscaled.
pub fn load_diabetes() -> HostData {
    let x_path = Path::new("<bundled>/diabetes/diabetes_data_raw.csv.gz");
    let y_path = Path::new("<bundled>/diabetes/diabetes_target.csv.gz");
    let x = gunzip_bytes(x_path, DIABETES_X).expect("the bundled diabetes data is valid gzip");
    let y = gunzip_bytes(y_path, DIABETES_Y).expect("the bundled diabetes data is valid gzip");
    csv::pair_from_bytes(x_path, &x, y_path, &y).expect("the bundled diabetes data is valid")
}
