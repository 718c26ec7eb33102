//! Geometry sharded over data across processes, without a scheduler: the
//! parts of each `sharded(k)` step run as separate `nngeo exec --part`
//! processes, the shard that owns the steps reduces them, and the merged
//! results equal the single-process run bit for bit (same reduction
//! order) and the unsharded file to 1e-12 relative. A missing part is
//! refused, naming it.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/shard/geometry.ngx"
);

fn nngeo(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("NNGEO_BACKEND")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        err,
    )
}

/// `key → value` of a run's results, timings left out.
fn results(dir: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), v["value"].clone())
        })
        .collect()
}

fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Array(a) => a.iter().flat_map(numbers).collect(),
        Value::Object(o) => o.values().flat_map(numbers).collect(),
        _ => vec![],
    }
}

/// Largest relative difference between two runs' results, key by key.
fn max_rel(a: &[(String, Value)], b: &[(String, Value)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        let (x, y) = (numbers(va), numbers(vb));
        assert_eq!(x.len(), y.len(), "{ka}");
        assert!(!x.is_empty(), "{ka}");
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (p, q) in x.iter().zip(&y) {
            let e = (p - q).abs() / scale.max(f64::MIN_POSITIVE);
            assert!(e.is_finite(), "{ka}");
            worst = worst.max(e);
        }
    }
    worst
}

/// `(step, [(stage name, parts)])` of the plan's sharded steps, from `nngeo plan --on slurm`.
fn sharded_steps(d: &Path) -> Vec<(u32, Vec<(String, usize)>)> {
    let (code, out, err) = nngeo(
        d,
        &["plan", "geometry.ngx", "--on", "slurm", "--out", "run"],
    );
    assert_eq!(code, 0, "{err}");
    let mut steps: Vec<(u32, Vec<(String, usize)>)> = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("step #") {
            let id: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
            steps.push((id, vec![]));
        } else if t.starts_with("stage ") && t.contains("task(s)") {
            let name = t.split('`').nth(1).unwrap().to_string();
            let n: usize = t
                .split("`: ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            steps.last_mut().unwrap().1.push((name, n));
        }
    }
    steps
}

/// The owner of the sharded steps: `--shard 0/1` into `RUN/shards/0`.
fn own(d: &Path, file: &str, run: &str) -> (i32, String) {
    let out = format!("{run}/shards/0");
    let (code, _, err) = nngeo(d, &["exec", file, "--shard", "0/1", "--out", &out]);
    (code, err)
}

/// [`own`], then the merge.
fn own_and_merge(d: &Path, file: &str, run: &str) {
    let (code, err) = own(d, file, run);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = nngeo(d, &["report", run]);
    assert_eq!(code, 0, "{err}");
}

/// Copies the files of `from` into `to`, but those `skip` names.
fn copy_dir(from: &Path, to: &Path, skip: impl Fn(&str) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if !skip(&e.file_name().to_string_lossy()) {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn parts_in_separate_processes_reduce_to_the_single_process_results() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = std::fs::read_to_string(FIXTURE).unwrap();
    std::fs::write(d.join("geometry.ngx"), &src).unwrap();
    let mut plain = src.clone();
    for k in 1..=9 {
        plain = plain.replace(&format!(" sharded({k})"), "");
    }
    assert!(!plain.contains("sharded("));
    std::fs::write(d.join("plain.ngx"), &plain).unwrap();

    // One process, sharded and not.
    let (code, _, err) = nngeo(d, &["exec", "geometry.ngx", "--out", "one"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = nngeo(d, &["exec", "plain.ngx", "--out", "plain"]);
    assert_eq!(code, 0, "{err}");
    let one = results(&d.join("one"));
    let plain_r = results(&d.join("plain"));
    assert!(one.len() >= 14, "{}", one.len());
    let e = max_rel(&one, &plain_r);
    println!("sharded in one process vs unsharded: max relative difference {e:.2e}");
    assert!(e <= 1e-12, "{e:e}");

    // The stages: EKFAC's two, the dense Fisher's, the kernel's (4 ranges
    // → 10 row blocks) and the gradient's one; the implicit one has none.
    let steps = sharded_steps(d);
    let stages: Vec<Vec<(String, usize)>> = steps.iter().map(|s| s.1.clone()).collect();
    assert_eq!(
        stages,
        vec![
            vec![("factors".to_string(), 3), ("diagonal".to_string(), 3)],
            vec![("sums".to_string(), 2)],
            vec![("kernel".to_string(), 10)],
            vec![("sums".to_string(), 3)],
        ]
    );

    // Every part as its own process, stage after stage.
    for (step, stages) in &steps {
        for (name, n) in stages {
            for j in 0..*n {
                let spec = format!("{step}:{name}/{j}/{n}");
                let (code, _, err) = nngeo(
                    d,
                    &["exec", "geometry.ngx", "--part", &spec, "--out", "run"],
                );
                assert_eq!(code, 0, "--part {spec}: {err}");
                let f = d.join(format!("run/parts/{step}/{name}-{j}-of-{n}.safetensors"));
                assert!(f.exists(), "{}", f.display());
            }
        }
    }
    // The shard that owns the steps reduces the parts; the merge.
    own_and_merge(d, "geometry.ngx", "run");
    // Without Slurm, `status` counts each stage's parts from their files.
    let (code, out, err) = nngeo(d, &["status", "run"]);
    assert_eq!(code, 0, "{err}");
    for (step, stages) in &steps {
        for (name, n) in stages {
            let line = format!("stage `{name}`: {n} of {n} done");
            assert!(
                out.lines()
                    .any(|l| l.contains(&format!("step #{step} ")) && l.contains(&line)),
                "{line}: {out}"
            );
        }
    }
    let merged = results(&d.join("run"));
    // Same reduction order as the single process: bit for bit.
    assert_eq!(merged, one);
    let e = max_rel(&merged, &plain_r);
    println!("parts in separate processes vs unsharded: max relative difference {e:.2e}");
    assert!(e <= 1e-12, "{e:e}");

    // A part missing: the reduce refuses, naming it.
    let (ekfac, dense) = (steps[0].0, steps[1].0);
    std::fs::create_dir_all(d.join("gap/parts")).unwrap();
    for (step, name, n, skip) in [
        (ekfac, "factors", 3, None),
        (ekfac, "diagonal", 3, Some(1)),
        (dense, "sums", 2, None),
    ] {
        let from = d.join(format!("run/parts/{step}"));
        let to = d.join(format!("gap/parts/{step}"));
        std::fs::create_dir_all(&to).unwrap();
        for j in 0..n {
            if Some(j) != skip {
                let f = format!("{name}-{j}-of-{n}.safetensors");
                std::fs::copy(from.join(&f), to.join(&f)).unwrap();
            }
        }
    }
    let (code, err) = own(d, "geometry.ngx", "gap");
    assert_ne!(code, 0);
    assert!(
        err.contains("lacks part(s) 1 of the 3 of stage `diagonal`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("--part {ekfac}:diagonal/J/3")),
        "{err}"
    );

    // A part of another plan (an edited file) is refused.
    let edited = src.replace("steps = 3", "steps = 2");
    std::fs::write(d.join("geometry.ngx"), edited).unwrap();
    let (code, err) = own(d, "geometry.ngx", "run2");
    assert_eq!(code, 0, "no parts folder: computed here; {err}");
    std::fs::create_dir_all(d.join("run3/parts")).unwrap();
    copy_dir(
        &d.join(format!("run/parts/{dense}")),
        &d.join(format!("run3/parts/{dense}")),
        |_| false,
    );
    let (code, err) = own(d, "geometry.ngx", "run3");
    assert_ne!(code, 0);
    assert!(err.contains("computed for another plan"), "{err}");
}

#[test]
fn bad_part_specs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::copy(FIXTURE, d.join("geometry.ngx")).unwrap();
    let steps = sharded_steps(d);
    let ekfac = steps[0].0;
    for (spec, want) in [
        ("x/0/3".to_string(), "expected STEP[:STAGE]/J/K".to_string()),
        (
            "0/0/3".to_string(),
            "is not a top-level representation or gradient with `sharded(k)`".to_string(),
        ),
        (
            format!("{ekfac}/3/3"),
            "has 3 part(s), so J/K must be J/3".to_string(),
        ),
        (format!("{ekfac}/0/4"), "has 3 part(s)".to_string()),
        (
            format!("{ekfac}:bogus/0/3"),
            "1 = factors (3 parts), 2 = diagonal (3 parts)".to_string(),
        ),
    ] {
        let (code, _, err) = nngeo(
            d,
            &["exec", "geometry.ngx", "--part", &spec, "--out", "run"],
        );
        assert_eq!(code, 2, "{spec}: {err}");
        assert!(err.contains(&want), "{spec}: {err}");
    }
    // Stage 2 before stage 1: refused, naming the missing factors.
    let spec = format!("{ekfac}:diagonal/0/3");
    let (code, _, err) = nngeo(
        d,
        &["exec", "geometry.ngx", "--part", &spec, "--out", "run"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("lacks part(s) 0-2 of the 3 of stage `factors`"),
        "{err}"
    );
}

/// `grad(net, DATA sharded(k))` of a classifier and of a regression
/// network (MSE): `sharded(1)` is the unsharded gradient bit for bit, more
/// parts agree to 1e-12 relative, and parts computed by separate
/// processes reduce to exactly the single-process sharded result.
#[test]
fn a_sharded_gradient_equals_the_unsharded_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = |k: Option<usize>| {
        let sh = k.map(|k| format!(" sharded({k})")).unwrap_or_default();
        format!(
            "experiment gradshard {{ seed = 0 dtype = f64 }}
data blobs = blobs(n = 23, classes = 3, dim = 4, std = 0.8, seed = 3)
data reg = diabetes |> normalize |> take(17, random, seed = 1)
model net = mlp(in = 4, hidden = [6], out = 3, act = tanh, init = kaiming(seed = 0))
model rnet = mlp(data = reg, hidden = [5], act = tanh, init = kaiming(seed = 1))
let g = grad(net, blobs{sh})
let h = grad(rnet, reg{sh})
measure norm(g) as \"g/norm\", mv(Fim(Diag) of net on blobs, g) as \"g/entries\"
measure norm(h) as \"h/norm\", mv(Fim(Diag) of rnet on reg, h) as \"h/entries\"
"
        )
    };
    let run = |name: &str, k: Option<usize>| {
        std::fs::write(d.join(format!("{name}.ngx")), src(k)).unwrap();
        let (code, _, err) = nngeo(d, &["exec", &format!("{name}.ngx"), "--out", name]);
        assert_eq!(code, 0, "{err}");
        results(&d.join(name))
    };
    let plain = run("plain", None);
    assert_eq!(plain.len(), 4);
    assert_eq!(
        run("one", Some(1)),
        plain,
        "sharded(1) is the unsharded gradient"
    );
    for k in [2, 5, 17] {
        let e = max_rel(&run(&format!("k{k}"), Some(k)), &plain);
        println!("gradient in {k} parts vs unsharded: max relative difference {e:.2e}");
        assert!(e <= 1e-12, "{k}: {e:e}");
    }
    // Parts as separate processes (5 of each gradient), then the owner.
    let one = run("five", Some(5));
    let steps = {
        let (code, out, err) = nngeo(d, &["plan", "five.ngx", "--on", "slurm", "--out", "run"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("step #"))
            .map(|r| r.split_whitespace().next().unwrap().parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(steps.len(), 2);
    for step in &steps {
        for j in 0..5 {
            let spec = format!("{step}:sums/{j}/5");
            let (code, _, err) = nngeo(d, &["exec", "five.ngx", "--part", &spec, "--out", "run"]);
            assert_eq!(code, 0, "--part {spec}: {err}");
        }
    }
    own_and_merge(d, "five.ngx", "run");
    assert_eq!(results(&d.join("run")), one);
    // A gradient part missing: refused, naming it.
    for step in &steps {
        copy_dir(
            &d.join(format!("run/parts/{step}")),
            &d.join(format!("gap/parts/{step}")),
            |name| *step == steps[1] && name == "sums-3-of-5.safetensors",
        );
    }
    let (code, err) = own(d, "five.ngx", "gap");
    assert_ne!(code, 0);
    assert!(
        err.contains("lacks part(s) 3 of the 5 of stage `sums`"),
        "{err}"
    );
}
