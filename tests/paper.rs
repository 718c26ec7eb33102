//! The papers' CIFAR-scale setups (experiments/paper/) on the CPU: their
//! standard data files are looked up in the data folders, here a small
//! synthetic CIFAR-10-shaped stand-in, and they run end to end with a
//! reduced width.

use std::path::Path;
use std::process::{Command, Output};

fn nngeo(args: &[&str], data: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nngeo"));
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .env_remove("NNGEO_DATA");
    if let Some(d) = data {
        c.env("NNGEO_DATA", d);
    }
    c.output().expect("run nngeo")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// CIFAR-10's binary layout (label byte + 3072 pixel bytes per record) in
/// `dir/cifar-10-batches-bin/`, `per_batch` records per file; pixels are
/// class-dependent so that a network can learn something.
fn synthetic_cifar(dir: &Path, per_batch: usize) {
    let root = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&root).unwrap();
    let mut state = 12345u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let names: Vec<String> = (1..=5)
        .map(|k| format!("data_batch_{k}.bin"))
        .chain(["test_batch.bin".to_string()])
        .collect();
    for name in names {
        let mut bytes = Vec::with_capacity(per_batch * 3073);
        for _ in 0..per_batch {
            // Balanced classes, so that per-class probes can be drawn.
            let label = (bytes.len() / 3073 % 10) as u8;
            bytes.push(label);
            for p in 0..3072 {
                let base = (label as usize * 23 + p / 1024 * 40) % 200;
                bytes.push((base + (next() % 56) as usize) as u8);
            }
        }
        std::fs::write(root.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar10_by_split_is_found_in_the_data_folders() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_cifar(dir.path(), 20);
    let src = dir.path().join("c.ngx");
    std::fs::write(
        &src,
        "experiment c { seed = 0 }\n\
         data train = cifar10(split = train) |> normalize(per = channel)\n\
         data test = cifar10(split = test) |> normalize(mean = [120, 130, 140], std = [60, 60, 60])\n\
         model net = sequential(conv2d(3, 4, kernel = 3, stride = 2, padding = 1), batchnorm2d(4), relu, flatten, linear(1024, 10), input = [3, 32, 32])\n\
         train net on train as trained {\n  loss = cross_entropy\n  optimizer = sgd(lr = 0.05)\n  steps = 3, batch = 25\n  augment = crop_flip(padding = 4, seed = 1)\n  eval = test\n}\n\
         measure accuracy(trained, test)\n",
    )
    .unwrap();
    let out = nngeo(&["check", src.to_str().unwrap()], Some(dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out_dir = dir.path().join("out");
    let out = nngeo(
        &[
            "exec",
            src.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(dir.path()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert!(results.contains("\"train/loss\""), "{results}");
    assert!(results.contains("accuracy"), "{results}");
}

#[test]
fn a_missing_standard_dataset_names_the_file_and_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("c.ngx");
    std::fs::write(
        &src,
        "experiment c { seed = 0 }\ndata train = cifar10(split = train)\n",
    )
    .unwrap();
    let out = nngeo(&["check", src.to_str().unwrap()], Some(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("c.ngx:2:"), "{err}");
    assert!(err.contains("data_batch_1.bin"), "{err}");
    assert!(
        err.contains(
            &dir.path()
                .join("cifar-10-batches-bin")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains("NNGEO_DATA"), "{err}");
    // Without any data folder, it says so.
    let out = nngeo(&["check", src.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no data folder"),
        "{}",
        text(&out.stderr)
    );
}

/// MNIST's IDX files (`mnist/train-images-idx3-ubyte`, …) with `n` random
/// 28×28 images per split.
fn synthetic_mnist(dir: &Path, n: u32) {
    let root = dir.join("mnist");
    std::fs::create_dir_all(&root).unwrap();
    for stem in ["train", "t10k"] {
        let mut img = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            img.extend(d.to_be_bytes());
        }
        img.extend((0..n * 784).map(|i| (i * 7919 % 251) as u8));
        std::fs::write(root.join(format!("{stem}-images-idx3-ubyte")), img).unwrap();
        let mut lab = vec![0, 0, 8, 1];
        lab.extend(n.to_be_bytes());
        lab.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(root.join(format!("{stem}-labels-idx1-ubyte")), lab).unwrap();
    }
}

/// Each paper file, and the edits that shrink it to seconds on a CPU
/// (width, length, batch, probe sizes); every edit must apply.
const PAPER: &[(&str, &[(&str, &str)])] = &[
    (
        "lazy_vs_hasty_cifar",
        &[
            ("width = 64", "width = 2"),
            ("epochs = 30", "steps = 3"),
            ("batch = 128", "batch = 20"),
            ("every = 390", "every = 3"),
        ],
    ),
    (
        "ntk_align_cifar",
        &[
            // Narrower, a 19-layer ReLU net's signal dies (a NaN alignment).
            ("width = 64", "width = 8"),
            ("epochs = 50", "steps = 6"),
            ("batch = 128", "batch = 20"),
            (
                "take(10, per_class, seed = 1)\n\nmodel",
                "take(2, per_class, seed = 1)\n\nmodel",
            ),
            ("noisy |> take(10, per_class", "noisy |> take(2, per_class"),
        ],
    ),
    (
        "ekfac_cifar",
        &[
            ("width = 64", "width = 2"),
            ("epochs = 20", "steps = 3"),
            ("batch = 128", "batch = 20"),
            ("refresh = 50)", "refresh = 2)"),
            ("refresh = 50, refit = 10", "refresh = 2, refit = 1"),
        ],
    ),
    (
        "ekfac_mnist_autoencoder",
        &[
            (
                "hidden = [1000, 500, 250], code = 30",
                "hidden = [16, 8, 4], code = 2",
            ),
            ("epochs = 10", "steps = 3"),
            ("batch = 256", "batch = 20"),
            ("refresh = 20)", "refresh = 2)"),
            ("refresh = 20, refit = 5", "refresh = 2, refit = 1"),
        ],
    ),
];

fn paper_file(name: &str) -> String {
    format!("experiments/paper/{name}.ngx")
}

#[test]
fn paper_experiments_check_and_plan_with_their_estimates() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_cifar(dir.path(), 150);
    synthetic_mnist(dir.path(), 300);
    for (name, _) in PAPER {
        let out = nngeo(&["plan", &paper_file(name)], Some(dir.path()));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let plan = text(&out.stdout);
        assert!(
            plan.contains("FLOP") && plan.contains("B "),
            "{name}: {plan}"
        );
        assert!(plan.contains("train"), "{name}: {plan}");
    }
    let files: Vec<String> = PAPER.iter().map(|(n, _)| paper_file(n)).collect();
    let mut args = vec!["check"];
    args.extend(files.iter().map(|s| s.as_str()));
    let out = nngeo(&args, Some(dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn paper_experiments_run_end_to_end_reduced() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_cifar(dir.path(), 20);
    synthetic_mnist(dir.path(), 60);
    for (name, edits) in PAPER {
        let mut src =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(paper_file(name)))
                .unwrap();
        for (from, to) in *edits {
            assert!(src.contains(from), "{name}: `{from}` not in the file");
            src = src.replace(from, to);
        }
        let file = dir.path().join(format!("{name}.ngx"));
        std::fs::write(&file, src).unwrap();
        let out_dir = dir.path().join(name);
        let out = nngeo(
            &[
                "exec",
                file.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            Some(dir.path()),
        );
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let results = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
        assert!(results.lines().count() > 5, "{name}: {results}");
        assert!(results.contains("\"train/loss\""), "{name}");
        // The paper's claims, declared in the file, are evaluated on the
        // run (their verdict on a tiny synthetic stand-in is not the point).
        let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
        assert!(summary.contains("## Claims"), "{name}: {summary}");
        assert!(!summary.contains("not evaluated"), "{name}: {summary}");
    }
}
