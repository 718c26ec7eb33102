//! Integration tests for the dataset readers in `nngeo::data`.

use std::io::Write;
use std::path::{Path, PathBuf};

use nngeo::data::{
    cifar10_info, csv_info, csv_pair_info, diabetes_info, digits_info, idx_info, load_cifar10,
    load_csv, load_csv_pair, load_diabetes, load_digits, load_idx, load_tensors, safetensors_keys,
    tensors_info, ColumnRef, CsvSpec, DataError, DataInfo, DigitsSplit,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_counts_shapes_labels_and_pixels() {
    for (split, n, lo, hi, pixel_sum) in [
        (DigitsSplit::Train, 1442, 140, 147, 450_566.0),
        (DigitsSplit::Test, 355, 34, 36, 111_152.0),
    ] {
        let data = load_digits(split);
        assert_eq!(data.info, digits_info(split));
        assert_eq!(
            data.info,
            DataInfo {
                n,
                shape: vec![1, 8, 8],
                classes: Some(10),
                target_dim: 1
            }
        );
        assert_eq!(data.x.len(), n * 64);
        assert_eq!(data.y.len(), n);

        let mut counts = [0usize; 10];
        for &label in &data.y {
            assert!(
                label.fract() == 0.0 && (0.0..10.0).contains(&label),
                "{label}"
            );
            counts[label as usize] += 1;
        }
        for (class, &count) in counts.iter().enumerate() {
            assert!((lo..=hi).contains(&count), "class {class}: {count}");
        }
        assert_eq!(counts.iter().sum::<usize>(), n);

        assert!(data
            .x
            .iter()
            .all(|&p| p.fract() == 0.0 && (0.0..=16.0).contains(&p)));
        assert_eq!(data.x.iter().cloned().fold(f32::MIN, f32::max), 16.0);
        assert_eq!(data.x.iter().map(|&p| p as f64).sum::<f64>(), pixel_sum);
    }
    // Known values: the training split starts with one example of each class in order.
    let train = load_digits(DigitsSplit::Train);
    assert_eq!(train.y[..10], [0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    assert_eq!(train.x[..8], [0., 0., 5., 13., 9., 1., 0., 0.]);
    let test = load_digits(DigitsSplit::Test);
    assert_eq!(test.y[..4], [5., 0., 9., 8.]);
}

// ---------------------------------------------------------------- idx

#[test]
fn idx_round_trip_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..18).map(|i| i * 10).collect(); // 3 images of 2x3
    let images = idx_bytes(0x803, &[3, 2, 3], &pixels);
    let labels = idx_bytes(0x801, &[3], &[2, 0, 4]);
    let expected_info = DataInfo {
        n: 3,
        shape: vec![1, 2, 3],
        classes: Some(5),
        target_dim: 1,
    };
    let expected_x: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();

    let (ip, lp) = (dir.path().join("img"), dir.path().join("lbl"));
    write(&ip, &images);
    write(&lp, &labels);
    let (gip, glp) = (dir.path().join("img.gz"), dir.path().join("lbl.gz"));
    write(&gip, &gzip(&images));
    write(&glp, &gzip(&labels));

    for (i, l) in [(&ip, &lp), (&gip, &glp), (&ip, &glp)] {
        assert_eq!(idx_info(i, l, None).unwrap(), expected_info);
        let data = load_idx(i, l, None).unwrap();
        assert_eq!(data.info, expected_info);
        assert_eq!(data.x, expected_x);
        assert_eq!(data.y, vec![2.0, 0.0, 4.0]);
    }
}

#[test]
fn idx_wrong_magic_is_a_format_error_naming_the_magic() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("train-images");
    let lp = dir.path().join("train-labels");
    write(&ip, &idx_bytes(0, &[1, 1, 1], &[7]));
    write(&lp, &idx_bytes(0x801, &[1], &[0]));
    for err in [
        idx_info(&ip, &lp, None).unwrap_err(),
        load_idx(&ip, &lp, None).unwrap_err(),
    ] {
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("train-images"), "{msg}");
        assert!(
            msg.contains("magic number 0x00000000, expected 0x00000803"),
            "{msg}"
        );
    }
    // Swapped files are recognised.
    write(&ip, &idx_bytes(0x803, &[1, 1, 1], &[7]));
    let msg = idx_info(&lp, &ip, None).unwrap_err().to_string();
    assert!(
        msg.contains("0x00000801") && msg.contains("swapped"),
        "{msg}"
    );
}

#[test]
fn idx_count_mismatch_and_truncation_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("img");
    let lp = dir.path().join("lbl");
    write(&ip, &idx_bytes(0x803, &[2, 1, 2], &[1, 2, 3, 4]));
    write(&lp, &idx_bytes(0x801, &[3], &[0, 1, 2]));
    let err = load_idx(&ip, &lp, None).unwrap_err();
    assert!(matches!(err, DataError::Mismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("2 images") && err.to_string().contains("3 labels"));

    write(&ip, &idx_bytes(0x803, &[3, 1, 2], &[1, 2, 3, 4]));
    for err in [
        idx_info(&ip, &lp, None).unwrap_err(),
        load_idx(&ip, &lp, None).unwrap_err(),
    ] {
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        assert!(err.to_string().contains("needs 6"), "{err}");
    }
    // Dimensions whose product passes 2⁶⁴ are a format error, not an
    // overflow.
    write(&ip, &idx_bytes(0x803, &[3, u32::MAX, u32::MAX], &[1, 2, 3]));
    let err = idx_info(&ip, &lp, None).unwrap_err();
    assert!(err.to_string().contains("more than 2⁶⁴"), "{err}");
    let missing = dir.path().join("nope");
    let err = idx_info(&missing, &lp, None).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
}

// ---------------------------------------------------------------- cifar

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    r
}

#[test]
fn cifar_round_trip_and_bad_size() {
    let dir = tempfile::tempdir().unwrap();
    let b1 = dir.path().join("data_batch_1.bin");
    let b2 = dir.path().join("data_batch_2.bin");
    let mut bytes = cifar_record(3, 0);
    bytes.extend(cifar_record(7, 1));
    write(&b1, &bytes);
    write(&b2, &cifar_record(9, 5));

    let info = cifar10_info(std::slice::from_ref(&b1)).unwrap();
    assert_eq!(
        info,
        DataInfo {
            n: 2,
            shape: vec![3, 32, 32],
            classes: Some(10),
            target_dim: 1
        }
    );
    let data = load_cifar10(std::slice::from_ref(&b1)).unwrap();
    assert_eq!(data.info, info);
    assert_eq!(data.y, vec![3.0, 7.0]);
    assert_eq!(data.x.len(), 2 * 3072);
    assert_eq!(data.x[..3], [0.0, 3.0, 6.0]);
    assert_eq!(data.x[3072..3075], [1.0, 4.0, 7.0]);
    assert_eq!(data.x[2 * 3072 - 1], ((3071u32 * 3 + 1) % 256) as f32);

    let both = vec![b1.clone(), b2.clone()];
    assert_eq!(cifar10_info(&both).unwrap().n, 3);
    assert_eq!(load_cifar10(&both).unwrap().y, vec![3.0, 7.0, 9.0]);

    let bad = dir.path().join("bad.bin");
    bytes.push(0);
    write(&bad, &bytes);
    for err in [
        cifar10_info(std::slice::from_ref(&bad)).unwrap_err(),
        load_cifar10(&[b1.clone(), bad.clone()]).unwrap_err(),
    ] {
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("6147") && msg.contains("3073"), "{msg}");
    }

    // A bad label in the second record: the header read (`check`) refuses
    // it as the load does, plain and gzipped.
    let bad_label = dir.path().join("c100.bin");
    let mut two = cifar_record(1, 0);
    two.extend(cifar_record(42, 0));
    write(&bad_label, &two);
    let gz_label = dir.path().join("c100.bin.gz");
    write(&gz_label, &gzip(&two));
    for err in [
        load_cifar10(std::slice::from_ref(&bad_label)).unwrap_err(),
        cifar10_info(std::slice::from_ref(&bad_label)).unwrap_err(),
        cifar10_info(&[gz_label]).unwrap_err(),
    ] {
        assert!(err.to_string().contains("label 42 in record 1"), "{err}");
    }
}

// ---------------------------------------------------------------- csv

fn spec(path: &Path, target: ColumnRef) -> CsvSpec {
    CsvSpec {
        path: path.to_path_buf(),
        target,
        features: None,
        header: true,
        delimiter: None,
        classification: false,
        classes: None,
    }
}

#[test]
fn csv_header_named_target_and_feature_subset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    write(&path, b"a, b ,label\n1,2,0\n\n3,4.5,2\n-5,6e1,1\n");

    let mut s = spec(&path, ColumnRef::Name("label".into()));
    let data = load_csv(&s).unwrap();
    let regression = DataInfo {
        n: 3,
        shape: vec![2],
        classes: None,
        target_dim: 1,
    };
    assert_eq!(data.info, regression);
    assert_eq!(csv_info(&s).unwrap(), regression);
    assert_eq!(data.x, vec![1.0, 2.0, 3.0, 4.5, -5.0, 60.0]);
    assert_eq!(data.y, vec![0.0, 2.0, 1.0]);

    s.classification = true;
    assert_eq!(csv_info(&s).unwrap().classes, Some(3));

    s.features = Some(vec![ColumnRef::Name("b".into()), ColumnRef::Index(0)]);
    let data = load_csv(&s).unwrap();
    assert_eq!(data.info.shape, vec![2]);
    assert_eq!(data.x, vec![2.0, 1.0, 4.5, 3.0, 60.0, -5.0]);

    // Target by index, gzipped file.
    let gz = dir.path().join("t.csv.gz");
    write(&gz, &gzip(&std::fs::read(&path).unwrap()));
    let data = load_csv(&spec(&gz, ColumnRef::Index(0))).unwrap();
    assert_eq!(data.y, vec![1.0, 3.0, -5.0]);
    assert_eq!(data.x, vec![2.0, 0.0, 4.5, 2.0, 60.0, 1.0]);
}

#[test]
fn csv_missing_column_lists_available_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    write(&path, b"age,bmi,y\n1,2,3\n");
    let err = csv_info(&spec(&path, ColumnRef::Name("target".into()))).unwrap_err();
    match &err {
        DataError::MissingColumn {
            column, available, ..
        } => {
            assert_eq!(column, "target");
            assert_eq!(available, &["age", "bmi", "y"]);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`target`") && msg.contains("age, bmi, y"),
        "{msg}"
    );

    let mut s = spec(&path, ColumnRef::Name("y".into()));
    s.features = Some(vec![ColumnRef::Index(7)]);
    let err = load_csv(&s).unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { ref column, .. } if column == "7"));
}

#[test]
fn csv_whitespace_delimiter_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt");
    write(&path, b"1 2  3\n4\t5 6\n  7 8 9  \n");
    let mut s = spec(&path, ColumnRef::Index(2));
    s.header = false;
    let data = load_csv(&s).unwrap();
    assert_eq!(data.info.n, 3);
    assert_eq!(data.x, vec![1.0, 2.0, 4.0, 5.0, 7.0, 8.0]);
    assert_eq!(data.y, vec![3.0, 6.0, 9.0]);
    s.delimiter = Some(' ');
    assert_eq!(load_csv(&s).unwrap().y, vec![3.0, 6.0, 9.0]);

    // Explicit semicolon delimiter.
    let semi = dir.path().join("semi.csv");
    write(&semi, b"x;y\n1,5;2\n");
    let mut s = spec(&semi, ColumnRef::Name("y".into()));
    s.delimiter = Some(';');
    let err = load_csv(&s).unwrap_err();
    assert!(err.to_string().contains("`1,5`"), "{err}");

    let ragged = dir.path().join("ragged.csv");
    write(&ragged, b"a,b\n1,2\n3\n");
    let err = load_csv(&spec(&ragged, ColumnRef::Index(1))).unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn csv_quoted_fields_keep_their_delimiters_and_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.csv");
    // A spreadsheet export: names with commas and doubled quotes, quoted
    // numbers, spaces around quoted fields.
    write(
        &path,
        b"\"weight, kg\",\"the \"\"label\"\"\", plain\n\"1.5\",2, 3\n 4 , \"5\" ,\"6\"\n",
    );
    let mut s = spec(&path, ColumnRef::Name("the \"label\"".into()));
    let data = load_csv(&s).unwrap();
    assert_eq!(data.y, vec![2.0, 5.0]);
    assert_eq!(data.x, vec![1.5, 3.0, 4.0, 6.0]);
    s.features = Some(vec![ColumnRef::Name("weight, kg".into())]);
    assert_eq!(load_csv(&s).unwrap().x, vec![1.5, 4.0]);

    // Whitespace-delimited with a quoted name that holds a space.
    let ws = dir.path().join("q.txt");
    write(&ws, b"\"body mass\" y\n1 2\n\"3\" 4\n");
    let data = load_csv(&spec(&ws, ColumnRef::Name("y".into()))).unwrap();
    assert_eq!((data.x, data.y), (vec![1.0, 3.0], vec![2.0, 4.0]));

    // Broken quoting names the line.
    for (text, what) in [
        (&b"a,b\n1,\"2\n"[..], "not closed on its line on line 2"),
        (
            &b"a,b\n1,2\n\"3\"x,4\n"[..],
            "text after a closing quote on line 3",
        ),
    ] {
        let bad = dir.path().join("bad.csv");
        write(&bad, text);
        let err = load_csv(&spec(&bad, ColumnRef::Index(1))).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn csv_classification_classes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.csv");
    write(&path, b"f,cls\n0.1,0\n0.2,4\n0.3,4\n0.4,1\n");
    let mut s = spec(&path, ColumnRef::Name("cls".into()));
    s.classification = true;
    let info = csv_info(&s).unwrap();
    assert_eq!(
        info,
        DataInfo {
            n: 4,
            shape: vec![1],
            classes: Some(5),
            target_dim: 1
        }
    );
    assert_eq!(load_csv(&s).unwrap().y, vec![0.0, 4.0, 4.0, 1.0]);

    for bad in [
        "f,cls\n1,0\n2,1.5\n",
        "f,cls\n1,-1\n",
        "f,cls\n1,0\n2,99999999999999999999\n",
    ] {
        write(&path, bad.as_bytes());
        let err = csv_info(&s).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        assert!(err.to_string().contains("non-negative integers"), "{err}");
    }
}

#[test]
fn csv_pair_and_bundled_diabetes() {
    let dir = tempfile::tempdir().unwrap();
    let xp = dir.path().join("x.txt.gz");
    let yp = dir.path().join("y.csv");
    write(&xp, &gzip(b"1 2 3\n4 5 6\n"));
    write(&yp, b"10\n20\n");
    let info = csv_pair_info(&xp, &yp).unwrap();
    assert_eq!(
        info,
        DataInfo {
            n: 2,
            shape: vec![3],
            classes: None,
            target_dim: 1
        }
    );
    let data = load_csv_pair(&xp, &yp).unwrap();
    assert_eq!(data.x, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(data.y, vec![10.0, 20.0]);

    // A header line is detected and skipped; row counts must agree.
    write(&yp, b"target\n10\n20\n30\n");
    let err = csv_pair_info(&xp, &yp).unwrap_err();
    assert!(matches!(err, DataError::Mismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("2 rows") && err.to_string().contains("3 rows"));

    let d = load_diabetes();
    assert_eq!(d.info, diabetes_info());
    assert_eq!(
        d.info,
        DataInfo {
            n: 442,
            shape: vec![10],
            classes: None,
            target_dim: 1
        }
    );
    assert_eq!(d.x.len(), 4420);
    assert_eq!(d.y.len(), 442);
    assert_eq!(
        d.x[..10],
        [59.0, 2.0, 32.1, 101.0, 157.0, 93.2, 38.0, 4.0, 4.8598, 87.0]
    );
    assert_eq!(d.x[4410..4413], [36.0, 1.0, 19.6]);
    assert_eq!(d.y[..3], [151.0, 75.0, 141.0]);
    assert_eq!(d.y[441], 57.0);
    assert_eq!(d.y.iter().map(|&v| v as f64).sum::<f64>(), 67_243.0);
}

// ---------------------------------------------------------------- safetensors

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    write(path, &safetensors::serialize(views, &None).unwrap());
}

fn tensors_file(dir: &Path) -> PathBuf {
    let path = dir.join("d.safetensors");
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    let x64: Vec<f64> = vec![0.1, -2.5, 1e-3, 3.0e10];
    write_safetensors(
        &path,
        &[
            (
                "x",
                Dtype::F32,
                vec![4, 2, 3],
                le_bytes(&x, f32::to_le_bytes),
            ),
            (
                "labels",
                Dtype::I64,
                vec![4],
                le_bytes(&[1i64, 0, 6, 2], i64::to_le_bytes),
            ),
            ("x64", Dtype::F64, vec![4], le_bytes(&x64, f64::to_le_bytes)),
            (
                "y2",
                Dtype::I32,
                vec![4, 2],
                le_bytes(&[1i32, -2, 3, -4, 5, -6, 7, -8], i32::to_le_bytes),
            ),
            ("img", Dtype::U8, vec![4, 1], vec![0, 17, 255, 3]),
            ("half", Dtype::F16, vec![4], vec![0; 8]),
        ],
    );
    path
}

#[test]
fn safetensors_keys_and_shapes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = tensors_file(dir.path());
    let keys = safetensors_keys(&path).unwrap();
    let expected: Vec<(String, Vec<usize>, String)> = [
        ("half", vec![4], "F16"),
        ("img", vec![4, 1], "U8"),
        ("labels", vec![4], "I64"),
        ("x", vec![4, 2, 3], "F32"),
        ("x64", vec![4], "F64"),
        ("y2", vec![4, 2], "I32"),
    ]
    .into_iter()
    .map(|(n, s, d)| (n.to_string(), s, d.to_string()))
    .collect();
    assert_eq!(keys, expected);

    let info = tensors_info(&path, "x", "labels", true, None).unwrap();
    let expected_info = DataInfo {
        n: 4,
        shape: vec![2, 3],
        classes: Some(7),
        target_dim: 1,
    };
    assert_eq!(info, expected_info);
    let data = load_tensors(&path, "x", "labels", true, None).unwrap();
    assert_eq!(data.info, expected_info);
    assert_eq!(data.x, (0..24).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
    assert_eq!(data.y, vec![1.0, 0.0, 6.0, 2.0]);

    // Regression with a k-column target and a u8 feature tensor.
    let data = load_tensors(&path, "img", "y2", false, None).unwrap();
    assert_eq!(
        data.info,
        DataInfo {
            n: 4,
            shape: vec![1],
            classes: None,
            target_dim: 2
        }
    );
    assert_eq!(data.x, vec![0.0, 17.0, 255.0, 3.0]);
    assert_eq!(data.y, vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0]);

    // Classification needs a one-column target with integer labels.
    assert!(tensors_info(&path, "x", "y2", true, None).is_err());
    let err = tensors_info(&path, "x", "x64", true, None).unwrap_err();
    assert!(err.to_string().contains("non-negative integers"), "{err}");
}

#[test]
fn safetensors_missing_key_lists_available_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = tensors_file(dir.path());
    for err in [
        tensors_info(&path, "inputs", "labels", false, None).unwrap_err(),
        load_tensors(&path, "x", "targets", false, None).unwrap_err(),
    ] {
        match &err {
            DataError::MissingKey { available, .. } => {
                assert_eq!(available, &["half", "img", "labels", "x", "x64", "y2"])
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("half, img, labels, x, x64, y2"),
            "{err}"
        );
    }
    let err = tensors_info(&path, "half", "labels", false, None).unwrap_err();
    assert!(matches!(err, DataError::UnsupportedDtype { ref dtype, .. } if dtype == "F16"));

    let not_st = dir.path().join("junk.safetensors");
    write(&not_st, b"hello world, this is not safetensors");
    let err = safetensors_keys(&not_st).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
}

#[test]
fn safetensors_f64_converts_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = tensors_file(dir.path());
    let data = load_tensors(&path, "x64", "labels", false, None).unwrap();
    assert_eq!(data.info.shape, vec![1]);
    assert_eq!(data.info.classes, None);
    assert_eq!(data.x, vec![0.1f64 as f32, -2.5, 1e-3f64 as f32, 3.0e10]);
    assert_eq!(data.x[0], 0.1f32);
    // Mismatched row counts.
    let other = dir.path().join("m.safetensors");
    write_safetensors(
        &other,
        &[
            (
                "x",
                Dtype::F64,
                vec![3, 1],
                le_bytes(&[1.0f64, 2.0, 3.0], f64::to_le_bytes),
            ),
            (
                "y",
                Dtype::F64,
                vec![2],
                le_bytes(&[1.0f64, 2.0], f64::to_le_bytes),
            ),
        ],
    );
    let err = tensors_info(&other, "x", "y", false, None).unwrap_err();
    assert!(matches!(err, DataError::Mismatch { .. }), "{err:?}");
}
