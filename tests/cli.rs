//! The `nngeo` binary: exit codes, output formats, error rendering.

use std::path::PathBuf;
use std::process::{Command, Output};

fn nngeo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run nngeo")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `source` to `dir/file.ngx` and runs `nngeo exec` on it into
/// `dir/out`; returns the output and that folder.
fn exec_source(dir: &std::path::Path, source: &str) -> (Output, std::path::PathBuf) {
    let src = dir.join("file.ngx");
    std::fs::write(&src, source).unwrap();
    let out_dir = dir.join("out");
    let out = nngeo(&[
        "exec",
        src.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    (out, out_dir)
}

#[test]
fn check_accepts_every_experiment() {
    let out = nngeo(&[
        "check",
        "experiments/ntk_align.ngx",
        "experiments/ekfac_optim.ngx",
        "experiments/lazy_vs_hasty.ngx",
        "experiments/fim_zoo.ngx",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches(": ok (").count(), 4);
}

#[test]
fn user_errors_exit_2_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.ngx");
    std::fs::write(
        &f,
        "experiment e { seed = 0 }\ndata d = digits(split = train)\nlet F = Fim(EKFCA) of net on d\n",
    )
    .unwrap();
    let out = nngeo(&["check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("bad.ngx:3:"), "{err}");
    assert!(err.contains("did you mean `EKFAC`?"), "{err}");
    // Both mistakes are reported, not only the first.
    assert!(err.contains("undefined model `net`"), "{err}");
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn missing_file_is_a_user_error() {
    let out = nngeo(&["check", "no/such/file.ngx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read `no/such/file.ngx`"));
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(nngeo(&["plan"]).status.code(), Some(2));
    assert_eq!(nngeo(&["frobnicate"]).status.code(), Some(2));
    let out = nngeo(&[
        "check",
        "experiments/fim_zoo.ngx",
        "--memory-budget",
        "lots",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_prints_table_json_and_yaml() {
    let table = nngeo(&["plan", "experiments/fim_zoo.ngx"]);
    assert_eq!(table.status.code(), Some(0));
    let t = text(&table.stdout);
    assert!(
        t.contains("memory") && t.contains("Fim(Dense)") && t.contains("20.5 MiB"),
        "{t}"
    );

    let json = nngeo(&["plan", "experiments/fim_zoo.ngx", "--format", "json"]);
    let plan = nngeo::plan::Plan::from_json(&text(&json.stdout)).expect("valid plan JSON");
    assert_eq!(plan.experiment.name, "fim_zoo");
    assert!(!plan.steps.is_empty());

    let yaml = nngeo(&["plan", "experiments/fim_zoo.ngx", "--format", "yaml"]);
    let y: serde_yaml::Value = serde_yaml::from_str(&text(&yaml.stdout)).unwrap();
    assert_eq!(y["experiment"]["name"].as_str(), Some("fim_zoo"));
}

#[test]
fn memory_budget_flag_refuses_large_representations() {
    // The dense Fisher of fim_zoo's CNN needs 20.5 MiB in f64.
    let out = nngeo(&[
        "check",
        "experiments/fim_zoo.ngx",
        "--memory-budget",
        "10MiB",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("Fim(Dense) needs 20.5 MiB, over the memory budget of 10.0 MiB"),
        "{err}"
    );
    assert!(err.contains("cheaper structure fits"), "{err}");
}

#[test]
fn exec_fim_zoo_writes_results_manifest_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = nngeo(&[
        "exec",
        "experiments/fim_zoo.ngx",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 4 measurements of F, 4 per structure for 7 structures, 3 layers, 2 solves.
    assert_eq!(lines.len(), 4 + 4 * 7 + 3 + 2, "{results}");
    let value = |key: &str, s: &str| {
        lines
            .iter()
            .find(|l| l["key"] == key && l["sweep"]["S"] == s)
            .and_then(|l| l["value"].as_f64())
            .unwrap_or_else(|| panic!("no {key} for {s}"))
    };
    // Exact representations have (numerically) zero error; approximations do not.
    assert!(value("rel_error", "LowRank") < 1e-10);
    assert!(value("rel_error", "Implicit") < 1e-10);
    assert!(value("rel_error", "KFAC") > 1e-3);
    // EKFAC's refitted diagonal is closer to the block-diagonal Fisher
    // than KFAC; both are block diagonal, so also closer to the dense one here.
    assert!(value("rel_error", "EKFAC(refit = true)") <= value("rel_error", "KFAC"));
    // Traces: every structure except KFAC preserves the trace exactly.
    let t = value("trace", "BlockDiag");
    for s in [
        "Diag",
        "EKFAC(refit = true)",
        "LowRank",
        "QuasiDiag",
        "Implicit",
    ] {
        assert!((value("trace", s) - t).abs() < 1e-9 * t, "{s}");
    }
    for f in [
        "results.csv",
        "manifest.json",
        "plan.json",
        "rel_error_vs_S.png",
        "rel_error_vs_S.svg",
        "memory_vs_S.png",
        "memory_vs_S.svg",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["status"], "ok");
    assert_eq!(manifest["backend"], "candle");
    let bad = nngeo(&["exec", "experiments/fim_zoo.ngx", "--device", "gpu"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn exec_with_an_unknown_backend_is_a_runtime_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = nngeo(&[
        "exec",
        "experiments/fim_zoo.ngx",
        "--backend",
        "torch7",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("backend `torch7` is not available"), "{err}");
    assert!(err.contains("known: candle"), "{err}");
    assert!(err.contains("plugins searched in"), "{err}");
}

#[test]
fn a_failing_run_keeps_what_it_computed() {
    // Training diverges (a learning rate of 1e300): the measurements before
    // the train step are kept, the error names the step, and the manifest
    // records the failure.
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = exec_source(
        dir.path(),
        "experiment partial { dtype = f64 }\n\
         data d = digits(split = train) |> take(20)\n\
         model net = mlp(in = 64, hidden = [8], out = 10)\n\
         let F = Fim(Diag) of net on d\n\
         measure trace(F) as \"before\"\n\
         train net on d { loss = cross_entropy\n optimizer = sgd(lr = 1e300)\n steps = 5\n batch = 10 }\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("diverged at step"),
        "{}",
        text(&out.stderr)
    );
    // Located at the `train` statement (line 6 of the source).
    assert!(
        text(&out.stderr).contains(".ngx:6:1: step #"),
        "{}",
        text(&out.stderr)
    );
    let results = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert!(results.contains("\"before\""), "{results}");
    assert!(results.contains("\"train/loss\""), "{results}");
    // The step named is the one after the last finite `train/loss`: the
    // loss logged at step s is that of the s-th update's mini-batch.
    let last_finite = results
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["key"] == "train/loss" && v["value"].as_f64().is_some_and(f64::is_finite))
        .map(|v| v["step"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        text(&out.stderr).contains(&format!("diverged at step {}:", last_finite + 1)),
        "last finite loss at step {last_finite}: {}",
        text(&out.stderr)
    );
    let manifest = std::fs::read_to_string(out_dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("failed"), "{manifest}");
}

#[test]
fn backends_lists_known_backends() {
    let out = nngeo(&["backends"]);
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out.stdout);
    assert!(t.contains("candle (built-in): ready"), "{t}");
    // The libtorch plugin is listed whether or not it is built.
    assert!(
        t.contains("tch (plugin): ready")
            || (t.contains("tch (plugin): not built") && t.contains("scripts/setup-libtorch.sh")),
        "{t}"
    );
}

#[test]
fn help_has_examples() {
    let out = nngeo(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("nngeo plan experiments/fim_zoo.ngx"));
}

#[test]
fn relative_paths_start_at_the_file() {
    // An IDX dataset next to the .ngx file is found wherever nngeo runs.
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<u8> = [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]
        .into_iter()
        .chain([1, 2, 3, 4, 5, 6, 7, 8])
        .collect();
    let labels: Vec<u8> = vec![0, 0, 8, 1, 0, 0, 0, 2, 0, 1];
    std::fs::write(dir.path().join("i.idx"), imgs).unwrap();
    std::fs::write(dir.path().join("l.idx"), labels).unwrap();
    let f: PathBuf = dir.path().join("x.ngx");
    std::fs::write(
        &f,
        "experiment x {}\ndata d = idx(images = \"i.idx\", labels = \"l.idx\")\n\
         model m = mlp(in = 4, hidden = [3], out = 2)\nmeasure trace(Fim(Dense) of m on d)\n",
    )
    .unwrap();
    let out = nngeo(&["plan", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan = nngeo::plan::Plan::from_json(&text(&out.stdout)).unwrap();
    match &plan.steps[0].op {
        nngeo::plan::Op::Data { info, .. } => {
            assert_eq!(
                (info.n, info.shape.clone(), info.classes),
                (2, vec![1, 2, 2], Some(2))
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn report_rebuilds_plots_and_csv_from_a_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = nngeo(&[
        "exec",
        "experiments/fim_zoo.ngx",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let files = [
        "results.csv",
        "summary.md",
        "rel_error_vs_S.png",
        "rel_error_vs_S.svg",
    ];
    for f in files {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let rep = nngeo(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(0), "{}", text(&rep.stderr));
    for f in files {
        assert!(dir.path().join(f).exists(), "{f} not rebuilt");
    }
    let missing = nngeo(&["report", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("plan.json"));
}

#[test]
fn claims_are_reported_and_strict_fails_on_an_unsupported_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = "experiment claims { dtype = f64 }\n\
         data d = digits(split = train) |> take(30)\n\
         model a = mlp(data = d, hidden = [6])\n\
         for lr in [0.1, 0.5] {\n\
           train a on d { optimizer = sgd(lr = lr)\n steps = 4\n batch = 10\n every 2 steps {\n\
             let B = Fim(BlockDiag) of a on d\n\
             measure rel_error(Fim(KFAC) of a on d, B) as \"rel_error/KFAC\"\n\
             measure rel_error(Fim(EKFAC) of a on d, B) as \"rel_error/EKFAC\" } }\n\
         }\n\
         expect \"EKFAC is never worse than KFAC\" : all(\"rel_error/EKFAC\" <= \"rel_error/KFAC\")\n\
         expect \"KFAC is exact\" : all(\"rel_error/KFAC\" < 1e-12)\n";
    let (out, out_dir) = exec_source(dir.path(), src);
    // Without --strict an unsupported claim is reported, not an error.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("claims: 1 of 2 supported"), "{stdout}");
    assert!(
        stdout.contains("✓ EKFAC is never worse than KFAC (line 13:1): supported [6/6 hold]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✗ KFAC is exact (line 14:1): not supported [0/6 hold]"),
        "{stdout}"
    );
    assert!(stdout.contains("fails at lr = 0.1, step 0:"), "{stdout}");
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("| KFAC is exact | 14:1 | 0/6 hold | **not supported** |"),
        "{summary}"
    );

    let rep = nngeo(&["report", out_dir.to_str().unwrap(), "--strict"]);
    assert_eq!(rep.status.code(), Some(3), "{}", text(&rep.stderr));
    assert!(text(&rep.stderr).contains("1 claim(s) not supported (--strict)"));
    let rep = nngeo(&["report", out_dir.to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(0));

    let strict = nngeo(&[
        "exec",
        dir.path().join("file.ngx").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--overwrite",
        "--strict",
    ]);
    assert_eq!(strict.status.code(), Some(3), "{}", text(&strict.stderr));
}

#[test]
fn a_rerun_into_the_same_folder_starts_its_example_files_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("track.ngx");
    std::fs::write(
        &src,
        "experiment track { dtype = f64 }\n\
         data d = digits(split = train) |> take(40) |> label_noise(0.2, seed = 1)\n\
         model net = mlp(data = d, hidden = [6])\n\
         train net on d { optimizer = sgd(lr = 0.1)\n steps = 4\n batch = 10\n\
           track = per_example(every = 2, groups = [flipped, clean]) }\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let lines = |extra: &[&str]| -> usize {
        let mut args = vec![
            "exec",
            src.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = nngeo(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let dir = out_dir.join("examples");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .unwrap();
        std::fs::read_to_string(file).unwrap().lines().count()
    };
    assert_eq!(lines(&[]), 3, "checkpoints at steps 0, 2, 4");
    assert_eq!(
        lines(&["--overwrite"]),
        3,
        "the second run appended to the first's file"
    );
}

#[test]
fn models_lists_the_library_with_parameter_counts() {
    let out = nngeo(&["models"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for line in [
        "resnet18(classes = 1000, stem = imagenet, input = [3, 224, 224], width = 64)",
        "11,689,512 parameters",
        "vgg(depth = 16, bn = false",
        "138,357,544 parameters",
        "wide_resnet(",
        "lenet5(",
        "autoencoder(input = 784",
        "mobilenet_v2(classes = 1000, input = [3, 224, 224])",
        "3,504,872 parameters",
    ] {
        assert!(s.contains(line), "{line} not in\n{s}");
    }
}

/// A residual network written with blocks, run end to end: per-layer
/// NTK traces add up to the whole NTK's, the block-diagonal Fisher has the
/// diagonal Fisher's trace, a KFAC/BlockDiag mix runs on conv, norm and
/// linear layers, and the saved weights load back by module path.
#[test]
fn exec_a_residual_net_written_with_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let source = r#"
experiment blocks { seed = 0 dtype = f64 }
data train = digits(split = train) |> normalize
data probe = train |> take(1, per_class, seed = 1)

block res(cin, cout, stride = 1) {
  conv1 = conv2d(cin, cout, kernel = 3, stride = stride, padding = 1, bias = false)
  bn1   = batchnorm2d(cout)
  conv2 = conv2d(cout, cout, kernel = 3, padding = 1, bias = false)
  downsample = when(stride != 1 or cin != cout, conv2d(cin, cout, kernel = 1, stride = stride))
  out(x) = relu(conv2(relu(bn1(conv1(x)))) + downsample(x))
}

block tiny(classes = 10) {
  conv1  = conv2d(1, 4, kernel = 3, padding = 1)
  layer1 = sequential(res(4, 4), res(4, 6, stride = 2))
  fc     = linear(6, classes)
  out(x) = fc(flatten(adaptive_avgpool2d(layer1(relu(conv1(x))), [1, 1])))
}

model net = tiny(input = [1, 8, 8], init = kaiming(seed = 3))

let K = Ntk(Dense) of net on probe
measure trace(K) as "ntk/total"
for layer in net {
  measure trace(K[layer]) as "ntk/{layer}"
}
measure trace(Fim(BlockDiag) of net on probe) as "fim/blockdiag"
measure trace(Fim(Diag) of net on probe) as "fim/diag"
let M = Fim(mix(linear = KFAC, conv = KFAC, norm = BlockDiag)) of net on probe
measure trace(M) as "fim/mix", trace(M["layer1.1.downsample"]) as "fim/mix/downsample"
measure trace(Fim(KFAC, layers = ["*.conv*", "fc"]) of net on probe) as "fim/kfac_glob"
save net to "w.safetensors"
"#;
    let (out, out_dir) = exec_source(dir.path(), source);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    let values: Vec<(String, f64)> = results
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let get = |k: &str| values.iter().find(|(key, _)| key == k).unwrap().1;
    for (k, v) in &values {
        assert!(v.is_finite() && *v > 0.0, "{k} = {v}");
    }
    let per_layer: f64 = values
        .iter()
        .filter(|(k, _)| k.starts_with("ntk/") && k != "ntk/total")
        .map(|(_, v)| v)
        .sum();
    // conv1, 2 × (conv1, bn1, conv2), the projection and fc.
    assert_eq!(
        values.iter().filter(|(k, _)| k.starts_with("ntk/")).count(),
        1 + 9
    );
    let total = get("ntk/total");
    assert!(
        (per_layer - total).abs() <= 1e-9 * total,
        "{per_layer} vs {total}"
    );
    let (bd, diag) = (get("fim/blockdiag"), get("fim/diag"));
    assert!((bd - diag).abs() <= 1e-9 * bd, "{bd} vs {diag}");

    // The saved state_dict loads back by module path.
    let again = dir.path().join("again.ngx");
    std::fs::write(
        &again,
        "experiment again { seed = 0 }\n\
         block res(cin, cout, stride = 1) {\n\
           conv1 = conv2d(cin, cout, kernel = 3, stride = stride, padding = 1, bias = false)\n\
           bn1 = batchnorm2d(cout)\n\
           conv2 = conv2d(cout, cout, kernel = 3, padding = 1, bias = false)\n\
           downsample = when(stride != 1 or cin != cout, conv2d(cin, cout, kernel = 1, stride = stride))\n\
           out(x) = relu(conv2(relu(bn1(conv1(x)))) + downsample(x))\n\
         }\n\
         block tiny(classes = 10) {\n\
           conv1 = conv2d(1, 4, kernel = 3, padding = 1)\n\
           layer1 = sequential(res(4, 4), res(4, 6, stride = 2))\n\
           fc = linear(6, classes)\n\
           out(x) = fc(flatten(adaptive_avgpool2d(layer1(relu(conv1(x))), [1, 1])))\n\
         }\n\
         model net = tiny(input = [1, 8, 8], weights = \"out/w.safetensors\")\n",
    )
    .unwrap();
    let out = nngeo(&["check", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `save` writes into the run folder in the run's precision: an f32 run's
/// weights are F32 tensors, an f64 run's F64, and they load back.
#[test]
fn save_writes_the_runs_precision_into_the_run_folder() {
    for (dtype, want) in [("f32", "F32"), ("f64", "F64")] {
        let dir = tempfile::tempdir().unwrap();
        let source = format!(
            "experiment s {{ seed = 0 dtype = {dtype} }}\n\
             data d = blobs(n = 20, classes = 2, dim = 3, seed = 1)\n\
             model m = mlp(in = 3, hidden = [4], out = 2)\n\
             save m to \"weights/m.safetensors\"\n"
        );
        let (out, out_dir) = exec_source(dir.path(), &source);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let saved = out_dir.join("weights/m.safetensors");
        let keys = nngeo::data::safetensors_keys(&saved).unwrap();
        assert!(!keys.is_empty());
        for (name, _, got) in &keys {
            assert_eq!(got, want, "{dtype} run saved `{name}` as {got}");
        }
        // Nothing was written next to the source file.
        assert!(!dir.path().join("weights").exists());
    }
}

/// Measurements inside training carry the epochs done, so `plot ... against
/// epoch` draws them: whole epochs for an `epochs =` run with an
/// every-epoch hook, fractional ones for a `steps =` run (hooks also fire
/// before the first step).
#[test]
fn plots_against_epoch_for_epoch_and_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = "experiment e { seed = 0 dtype = f64 }\n\
                  data d = blobs(n = 40, classes = 2, dim = 3, seed = 1)\n\
                  model m = mlp(in = 3, hidden = [4], out = 2)\n\
                  train m on d as a {\n  optimizer = sgd(lr = 0.1)\n  epochs = 3\n  batch = 10\n\
                  \x20 every 1 epoch { measure loss(m, d) as \"by_epoch\" }\n}\n\
                  train m on d as b {\n  optimizer = sgd(lr = 0.1)\n  steps = 6\n  batch = 20\n\
                  \x20 every 3 steps { measure loss(m, d) as \"by_step\" }\n}\n\
                  plot \"by_*\" against epoch as \"loss_epoch.png\"\n";
    let (out, out_dir) = exec_source(dir.path(), source);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let epochs = |key: &str| -> Vec<f64> {
        std::fs::read_to_string(out_dir.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["key"] == key)
            .map(|v| v["epoch"].as_f64().expect("an epoch"))
            .collect()
    };
    // 4 steps per epoch; the hook fires at the start and after each epoch.
    assert_eq!(epochs("by_epoch"), vec![0.0, 1.0, 2.0, 3.0]);
    // 2 steps per epoch; every 3 steps is 1.5 epochs.
    assert_eq!(epochs("by_step"), vec![0.0, 1.5, 3.0]);
    let png = out_dir.join("loss_epoch.png");
    assert!(
        std::fs::metadata(&png)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no plot"
    );
}

/// Without a terminal, a run prints progress lines (here: as often as it
/// can, `NNGEO_PROGRESS_EVERY = 0`): training steps with their loss and an
/// ETA, and finished steps; with the default (10 s) a short run prints none.
#[test]
fn progress_lines_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("p.ngx");
    std::fs::write(
        &src,
        "experiment p { seed = 0 }\n\
         data d = blobs(n = 40, classes = 2, dim = 3, seed = 1)\n\
         model m = mlp(in = 3, hidden = [4], out = 2)\n\
         train m on d as t { optimizer = sgd(lr = 0.1)\n steps = 5\n batch = 10 }\n\
         measure accuracy(t, d)\n",
    )
    .unwrap();
    let run = |every: Option<&str>, out: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nngeo"));
        cmd.args(["exec", src.to_str().unwrap(), "--out"])
            .arg(dir.path().join(out));
        if let Some(e) = every {
            cmd.env("NNGEO_PROGRESS_EVERY", e);
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        text(&o.stderr)
    };
    let err = run(Some("0"), "a");
    for k in 1..=5 {
        assert!(
            err.contains(&format!("train t: step {k}/5, loss ")),
            "{err}"
        );
    }
    assert!(err.contains("eta "), "{err}");
    assert!(err.contains("done: measure"), "{err}");
    let quiet = run(None, "b");
    assert!(!quiet.contains("[nngeo]"), "{quiet}");
}

/// The ResNet18 `exec-*` benchmark cases (the GPU targets) run end to end
/// through `nngeo exec`, here at width 2: each prints a finite median and
/// the comparison with its in-process case.
#[test]
fn bench_runs_the_resnet18_exec_cases() {
    let cases = [
        "exec-resnet18-ntk-100",
        "exec-resnet18-kfac-1000",
        "exec-resnet18-ekfac-refit-1000",
    ];
    let mut args = vec!["bench", "--repeats", "1"];
    for c in cases {
        args.extend(["--case", c]);
    }
    args.extend(["--case", "resnet18-kfac"]);
    let out = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args(&args)
        .env("NNGEO_BENCH_WIDTH", "2")
        .env_remove("NNGEO_BACKEND")
        .env_remove("NNGEO_DEVICE")
        .output()
        .expect("run nngeo");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for c in cases {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(c))
            .unwrap_or_else(|| panic!("no line for {c} in\n{stdout}"));
        let secs: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(secs.is_finite() && secs > 0.0, "{line}");
    }
    // KFAC's build is linear in n: 1000 images against 256 in-process.
    assert!(
        stdout.contains("exec-resnet18-kfac-1000 / resnet18-kfac × 1000/256: whole process"),
        "{stdout}"
    );
}

/// A reader that stops early (`nngeo models | head -1`) ends a listing
/// quietly, as any Unix filter does: no panic message, no exit status 101.
/// The pipe's read end is closed before the command writes anything.
#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    for cmd in ["models", "backends"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_nngeo"))
            .arg(cmd)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(writer)
            .output()
            .expect("run nngeo");
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        assert_ne!(out.status.code(), Some(101), "{cmd}: {err}");
    }
}

#[test]
fn an_output_folder_that_cannot_be_made_says_no_step_ran() {
    // `--out` names a file: the run stops taking its folder, before any
    // step, and does not suggest resuming results that do not exist.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("out"), "a file").unwrap();
    let (out, _) = exec_source(
        dir.path(),
        "experiment e {}\ndata d = digits() |> take(10)\nmodel net = mlp(in = 64, out = 10)\n\
         measure trace(Fim(Diag) of net on d)\n",
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no step ran") && !err.contains("--resume"),
        "{err}"
    );
}

/// A result JSON cannot hold (here NaN: inputs scaled by 1e300 overflow
/// the network) is written as `null` with `non_finite` naming it, read back
/// as NaN in the CSV, and the run warns about it, naming the keys.
#[test]
fn non_finite_results_are_named_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (out, folder) = exec_source(
        dir.path(),
        "experiment nf { seed = 0 dtype = f64 }\n\
         data train = digits(split = train) |> normalize\n\
         data probe = train |> take(20)\n\
         data big = probe |> scale(1e300)\n\
         model net = mlp(data = train, hidden = [8], init = pytorch(seed = 0))\n\
         let F = Fim(Dense) of net on probe\n\
         let G = Fim(Dense) of net on big\n\
         measure trace(F), trace(G)\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 result is not finite (trace(G): NaN)"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(folder.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let g = lines.iter().find(|l| l["key"] == "trace(G)").unwrap();
    assert_eq!(g["value"], serde_json::Value::Null);
    assert_eq!(g["non_finite"], "NaN");
    let f = lines.iter().find(|l| l["key"] == "trace(F)").unwrap();
    assert!(f["value"].as_f64().unwrap() > 0.0 && f.get("non_finite").is_none());
    let csv = std::fs::read_to_string(folder.join("results.csv")).unwrap();
    assert!(csv.contains("trace(G),") && csv.contains("NaN"), "{csv}");
}
