//! Bad data is an error, not a model: each file below used to check and run
//! (a 1-output model from one class, a 1,000,001-class model from one stray
//! label, NaN features "fixed" by lowering the learning rate, ...). Each is
//! now refused by `nngeo check` with exit code 2 and a message that names the
//! file and, where known, the row or tensor.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// `nngeo check FILE` on `src` written into `dir`: (exit code, stderr).
fn check(dir: &Path, src: &str) -> (i32, String) {
    let file = dir.join("exp.ngx");
    std::fs::write(&file, src).unwrap();
    check_file(&file)
}

fn check_file(file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args(["check", file.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap_or(-1), err)
}

fn assert_refused(dir: &Path, src: &str, needles: &[&str]) {
    let (code, err) = check(dir, src);
    assert_eq!(code, 2, "expected exit 2:\n{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from:\n{err}");
    }
}

const HEAD: &str = "experiment bad {\n  seed = 0\n}\n";

fn csv_exp(extra: &str) -> String {
    format!(
        "{HEAD}data d = csv(\"t.csv\", target = \"label\"{extra})\n\
         model m = mlp(in = 2, hidden = [4], out = 2)\n\
         measure trace(Fim(Diag) of m on d)\n"
    )
}

#[test]
fn a_classification_csv_with_one_class_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "a,b,label\n1,2,0\n3,4,0\n5,6,0\n").unwrap();
    assert_refused(
        dir.path(),
        &csv_exp(""),
        &["t.csv", "only one class", "classes = N", "exp.ngx:4"],
    );
    // Stating the count makes the file valid (e.g. a subset of a larger set).
    let (code, err) = check(dir.path(), &csv_exp(", classes = 2"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_stray_huge_label_is_refused_unless_the_count_is_stated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.csv"),
        "a,b,label\n1,2,0\n3,4,1\n5,6,1000000\n7,8,0\n",
    )
    .unwrap();
    assert_refused(
        dir.path(),
        &csv_exp(""),
        &[
            "t.csv",
            "1000000",
            "row 2",
            "1000001 classes from 3 distinct labels",
        ],
    );
    // A stated count the label exceeds names the row too.
    assert_refused(
        dir.path(),
        &csv_exp(", classes = 2"),
        &["t.csv", "1000000 at row 2", "allows 0 to 1"],
    );
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_exp() -> String {
    format!(
        "{HEAD}data d = idx(images = \"img.idx.gz\", labels = \"lab.idx\") |> normalize\n\
         model m = sequential(flatten, linear(4, 10), input = [1, 2, 2])\n\
         measure trace(Fim(Diag) of m on d)\n"
    )
}

#[test]
fn an_idx_label_of_255_in_a_ten_class_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = 40u32;
    let pixels: Vec<u8> = (0..4 * n).map(|i| i as u8).collect();
    let mut labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    std::fs::write(
        dir.path().join("img.idx.gz"),
        gz(&idx(0x803, &[n, 2, 2], &pixels)),
    )
    .unwrap();
    std::fs::write(dir.path().join("lab.idx"), idx(0x801, &[n], &labels)).unwrap();
    let (code, err) = check(dir.path(), &idx_exp());
    assert_eq!(code, 0, "the valid file checks: {err}");
    labels[17] = 255;
    std::fs::write(dir.path().join("lab.idx"), idx(0x801, &[n], &labels)).unwrap();
    assert_refused(
        dir.path(),
        &idx_exp(),
        &[
            "cannot read `lab.idx`",
            "255 at row 17",
            "256 classes from 11 distinct labels",
        ],
    );
    // The error points at the labels file, not at the images (column 23).
    let (_, err) = check(dir.path(), &idx_exp());
    assert!(
        err.contains("exp.ngx:4:") && !err.contains("exp.ngx:4:23"),
        "{err}"
    );
}

#[test]
fn a_truncated_gzipped_idx_file_fails_check_not_exec() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200u32;
    // Incompressible pixels, so that cutting the archive cuts the data.
    let mut state = 1u32;
    let pixels: Vec<u8> = (0..4 * n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let whole = gz(&idx(0x803, &[n, 2, 2], &pixels));
    std::fs::write(dir.path().join("img.idx.gz"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(dir.path().join("lab.idx"), idx(0x801, &[n], &labels)).unwrap();
    assert_refused(dir.path(), &idx_exp(), &["img.idx.gz", "exp.ngx:4"]);
}

#[test]
fn nan_and_infinity_in_features_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.csv"),
        "a,b,label\n1,2,0\n3,NaN,1\n5,6,1\n",
    )
    .unwrap();
    assert_refused(
        dir.path(),
        &csv_exp(""),
        &["t.csv", "`NaN` in column `b` on line 3", "finite"],
    );
    std::fs::write(
        dir.path().join("t.csv"),
        "a,b,label\n1,2,0\n3,4,1\ninf,6,1\n",
    )
    .unwrap();
    assert_refused(dir.path(), &csv_exp(""), &["`inf` in column `a` on line 4"]);

    // A safetensors dataset: the row of the first non-finite value.
    let mut x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    x[7] = f32::INFINITY;
    let y: Vec<i64> = vec![0, 1, 0, 1, 0, 1];
    write_safetensors(
        &dir.path().join("d.safetensors"),
        &[
            ("x", "F32", vec![6, 2], f32_bytes(&x)),
            ("y", "I64", vec![6], i64_bytes(&y)),
        ],
    );
    assert_refused(
        dir.path(),
        &format!(
            "{HEAD}data d = tensors(\"d.safetensors\", x = \"x\", y = \"y\")\n\
             model m = mlp(in = 2, hidden = [4], out = 2)\n\
             measure trace(Fim(Diag) of m on d)\n"
        ),
        &["d.safetensors", "tensor `x` at row 3", "finite"],
    );
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file with tensors laid out one after the other, or at the
/// given offsets where `offsets` is set (to write corrupt files).
fn write_safetensors_at(
    path: &Path,
    tensors: &[(&str, &str, Vec<usize>, Vec<u8>)],
    offsets: Option<&[(usize, usize)]>,
) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        let (s, e) = match offsets {
            Some(o) => o[i],
            None => (data.len(), data.len() + bytes.len()),
        };
        if offsets.is_none() {
            data.extend(bytes);
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [s, e]}),
        );
    }
    if let Some(o) = offsets {
        data = vec![0u8; o.iter().map(|o| o.1).max().unwrap_or(0)];
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    write_safetensors_at(path, tensors, None)
}

/// The tensors of `mlp(in = 2, hidden = [3], out = 2)` with `weight_0`
/// replaced where given.
fn mlp_tensors(w0: Vec<f64>) -> Vec<(&'static str, &'static str, Vec<usize>, Vec<u8>)> {
    let f = |v: Vec<f64>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    vec![
        ("layers.0.weight", "F64", vec![3, 2], f(w0)),
        ("layers.0.bias", "F64", vec![3], f(vec![0.0; 3])),
        ("layers.2.weight", "F64", vec![2, 3], f(vec![0.1; 6])),
        ("layers.2.bias", "F64", vec![2], f(vec![0.0; 2])),
    ]
}

fn weights_exp() -> String {
    format!(
        "{HEAD}data d = blobs(n = 20, classes = 2, dim = 2, seed = 1)\n\
         model m = mlp(in = 2, hidden = [3], out = 2, weights = \"w.safetensors\")\n\
         measure accuracy(m, d)\n"
    )
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    write_safetensors(&w, &mlp_tensors(vec![0.5; 6]));
    let (code, err) = check(dir.path(), &weights_exp());
    assert_eq!(code, 0, "the valid weights check: {err}");
    let mut bad = vec![0.5; 6];
    bad[4] = f64::NAN;
    write_safetensors(&w, &mlp_tensors(bad));
    assert_refused(
        dir.path(),
        &weights_exp(),
        &[
            "w.safetensors",
            "`layers.0.weight`",
            "flat index 4",
            "exp.ngx:5",
        ],
    );
}

#[test]
fn overlapping_tensors_are_named_both() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let t = mlp_tensors(vec![0.5; 6]);
    // Sizes 48, 24, 48, 16 bytes; `layers.2.weight` starts inside
    // `layers.0.bias`.
    let offsets = [(0, 48), (48, 72), (64, 112), (112, 128)];
    write_safetensors_at(&w, &t, Some(&offsets));
    assert_refused(
        dir.path(),
        &weights_exp(),
        &[
            "w.safetensors",
            "`layers.2.weight` (bytes 64..112) overlaps tensor `layers.0.bias` (bytes 48..72)",
        ],
    );
}

#[test]
fn invalid_utf8_in_a_source_file_gives_line_column_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.ngx");
    let mut bytes = b"experiment bad {\n  seed = 0\n}\n// caf".to_vec();
    bytes.push(0xe9); // Latin-1 'é'
    bytes.extend(b"\n");
    std::fs::write(&file, &bytes).unwrap();
    let (code, err) = check_file(&file);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exp.ngx:4:7: invalid UTF-8 (byte 0xe9 at byte offset 36)"),
        "{err}"
    );
}

#[test]
fn an_undamped_solve_with_a_singular_fisher_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 32 + 4 parameters, 3 examples × (2 - 1) directions: singular whatever
    // the data, refused by `check`.
    let src = format!(
        "{HEAD}data d = blobs(n = 3, classes = 2, dim = 8, seed = 1)\n\
         model m = mlp(in = 8, hidden = [4], out = 2)\n\
         let F = Fim(Dense) of m on d\n\
         measure solve(F, grad(m, d), damping = 0)\n"
    );
    assert_refused(
        dir.path(),
        &src,
        &["damping", "46 parameters but rank at most 3", "exp.ngx:7"],
    );
    let (code, err) = check(dir.path(), &src.replace("damping = 0)", "damping = 1e-3)"));
    assert_eq!(code, 0, "{err}");

    // Enough examples for the count, but a softmax Fisher is still singular
    // (adding one constant to every logit changes nothing): `exec` says so
    // with the eigenvalues, instead of returning a pivoted solve's noise.
    let src = format!(
        "{HEAD}data d = blobs(n = 40, classes = 2, dim = 2, seed = 1)\n\
         model m = sequential(linear(2, 2), input = [2])\n\
         let F = Fim(Dense) of m on d\n\
         measure solve(F, grad(m, d), damping = 0)\n"
    );
    let (code, err) = check(dir.path(), &src);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args([
            "exec",
            dir.path().join("exp.ngx").to_str().unwrap(),
            "--out",
        ])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("singular") && err.contains("eigenvalues are zero"),
        "{err}"
    );
}

#[test]
fn check_warns_where_ekfac_without_refit_equals_kfac() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!(
        "{HEAD}data d = blobs(n = 20, classes = 2, dim = 2, seed = 1)\n\
         model m = mlp(in = 2, hidden = [3], out = 2)\n\
         measure trace(Fim(EKFAC(refit = false)) of m on d)\n"
    );
    let (code, err) = check(dir.path(), &src);
    assert_eq!(code, 0, "a warning is no error: {err}");
    assert!(
        err.contains("Warning")
            && err.contains("EKFAC without refit equals KFAC")
            && err.contains("exp.ngx:6:"),
        "{err}"
    );
    let (_, err) = check(dir.path(), &src.replace("EKFAC(refit = false)", "EKFAC"));
    assert!(!err.contains("Warning"), "{err}");
}

/// A weights file with tensors the model does not read (a checkpoint of
/// another model, an optimiser's state saved alongside) checks, with a
/// warning that names them; the exact file checks without one.
#[test]
fn weights_with_extra_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    write_safetensors(&w, &mlp_tensors(vec![0.5; 6]));
    let (code, err) = check(dir.path(), &weights_exp());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("does not read"), "{err}");
    let mut t = mlp_tensors(vec![0.5; 6]);
    let f = |v: Vec<f64>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    t.push(("layers.4.weight", "F64", vec![2, 2], f(vec![0.0; 4])));
    t.push((
        "momentum.layers.0.weight",
        "F64",
        vec![3, 2],
        f(vec![0.0; 6]),
    ));
    write_safetensors(&w, &t);
    let (code, err) = check(dir.path(), &weights_exp());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "holds 2 tensors the model does not read: layers.4.weight, momentum.layers.0.weight"
        ),
        "{err}"
    );
    assert!(err.contains("exp.ngx:"), "{err}");
}
