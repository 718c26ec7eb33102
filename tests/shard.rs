//! Sharded runs without a scheduler (`--shard I/N`, as any launcher would
//! run them): shards written by separate processes merge into exactly the
//! results of one process; a failed shard keeps the others' results and is
//! named by the merge; running it again completes the run.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/shard");

/// The sweep of tests/fixtures/shard (2 probe files × 3 replicates, a
/// training run outside the sweep that every point measures, hooks, a
/// claim, a plot) copied into `dir`.
fn setup(dir: &Path) -> std::path::PathBuf {
    for f in ["sweep.ngx", "p1.csv", "p2.csv"] {
        std::fs::copy(Path::new(FIXTURES).join(f), dir.join(f)).unwrap();
    }
    dir.join("sweep.ngx")
}

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

/// Shard `i` of `n` of `run/plan.json`, as a job array's task runs it.
fn plan_shard(d: &Path, i: usize, n: usize) -> (i32, String) {
    let (out, spec) = (format!("run/shards/{i}"), format!("{i}/{n}"));
    let args = [
        "exec",
        "run/plan.json",
        "--base-dir",
        ".",
        "--shard",
        &spec,
        "--out",
        &out,
    ];
    let (code, _, err) = nngeo(d, &args);
    (code, err)
}

/// Result lines without their timings.
fn results(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("time_s");
            o.remove("train_time_s");
            v
        })
        .collect()
}

#[test]
fn shards_merge_into_exactly_the_results_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let (code, _, err) = nngeo(d, &["exec", "sweep.ngx", "--out", "one"]);
    assert_eq!(code, 0, "{err}");
    let one = results(&d.join("one"));
    assert!(one.len() > 20, "{}", one.len());
    // The natural split (1 shared + 6 sweep points), and 3 groups of them.
    for n in [7usize, 3] {
        let run = format!("run{n}");
        for i in 0..n {
            let out = format!("{run}/shards/{i}");
            let spec = format!("{i}/{n}");
            let (code, _, err) = nngeo(d, &["exec", "sweep.ngx", "--shard", &spec, "--out", &out]);
            assert_eq!(code, 0, "shard {spec}: {err}");
        }
        let (code, out, err) = nngeo(d, &["report", &run]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!("merged {n} of {n} shard(s)")),
            "{err}"
        );
        assert!(out.contains("claims: 1 of 1 supported"), "{out}");
        let merged = results(&d.join(&run));
        assert_eq!(merged.len(), one.len(), "n = {n}");
        for (a, b) in merged.iter().zip(&one) {
            assert_eq!(a, b, "n = {n}");
        }
        assert!(d.join(&run).join("probe_loss_vs_step.png").exists());
        // The per-example files of each sweep point's training, byte for
        // byte; none from the shared run recomputed in the shards.
        let names = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir.join("examples"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&d.join(&run)), names(&d.join("one")));
        assert_eq!(names(&d.join("one")).len(), 6);
        for f in names(&d.join("one")) {
            assert_eq!(
                std::fs::read(d.join(&run).join("examples").join(&f)).unwrap(),
                std::fs::read(d.join("one/examples").join(&f)).unwrap(),
                "{f}"
            );
        }
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(d.join(&run).join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["status"], "ok");
    }
}

#[test]
fn a_failed_shard_keeps_the_others_and_its_rerun_completes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let (code, _, err) = nngeo(d, &["exec", "sweep.ngx", "--out", "one"]);
    assert_eq!(code, 0, "{err}");
    // The tasks run the plan as compiled (as a job array's tasks do); the
    // data file of one sweep point goes missing before its task runs.
    let (code, plan, err) = nngeo(d, &["plan", "sweep.ngx", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::write(d.join("run/plan.json"), plan).unwrap();
    std::fs::rename(d.join("p2.csv"), d.join("p2.moved")).unwrap();
    let mut failed = Vec::new();
    for i in 0..7 {
        let (code, err) = plan_shard(d, i, 7);
        if code != 0 {
            assert!(err.contains("p2.csv"), "{err}");
            assert!(err.contains(&format!("run/shards/{i}")), "{err}");
            failed.push(i);
        }
    }
    // The three replicates of the second data file.
    assert_eq!(failed, vec![4, 5, 6]);
    // Without a scheduler, `status` reads the shard folders alone.
    let (code, status, err) = nngeo(d, &["status", "run"]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("4 done, 3 failed"), "{status}");
    assert!(status.contains("cannot read `./p2.csv`"), "{status}");
    let (code, out, err) = nngeo(d, &["report", "run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("3 of 7 shard(s) are not complete (4-6)"),
        "{err}"
    );
    // No verdict on part of the data: the claim says why, and what the
    // shards present say.
    assert!(out.contains("claims: 0 of 1 supported"), "{out}");
    let summary = std::fs::read_to_string(d.join("run/summary.md")).unwrap();
    assert!(
        summary.contains("not evaluated: the run is incomplete (incomplete: 3 of 7 shard(s)")
            && summary.contains("the results so far: supported"),
        "{summary}"
    );
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/manifest.json")).unwrap())
            .unwrap();
    assert!(
        m["status"].as_str().unwrap().starts_with("incomplete"),
        "{m}"
    );
    let partial = results(&d.join("run"));
    let one = results(&d.join("one"));
    assert!(!partial.is_empty() && partial.len() < one.len());
    assert!(partial.iter().all(|l| one.contains(l)));
    // Back in place: the same commands finish the failed shards.
    std::fs::rename(d.join("p2.moved"), d.join("p2.csv")).unwrap();
    for i in failed {
        let (code, err) = plan_shard(d, i, 7);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = nngeo(d, &["report", "run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(results(&d.join("run")), one);
    assert!(out.contains("claims: 1 of 1 supported"), "{out}");
}

#[test]
fn a_shard_folder_of_another_plan_or_index_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let (code, plan, _) = nngeo(d, &["plan", "sweep.ngx", "--format", "json"]);
    assert_eq!(code, 0);
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::write(d.join("run/plan.json"), plan).unwrap();
    // Another index's folder.
    let (code, _, err) = nngeo(
        d,
        &[
            "exec",
            "sweep.ngx",
            "--shard",
            "1/7",
            "--out",
            "run/shards/2",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not the folder of shard 1"), "{err}");
    // The file edited after the run's plan was written.
    let sweep = std::fs::read_to_string(d.join("sweep.ngx")).unwrap();
    std::fs::write(
        d.join("sweep.ngx"),
        sweep.replace("steps = 4\n}", "steps = 5\n}"),
    )
    .unwrap();
    let (code, _, err) = nngeo(
        d,
        &[
            "exec",
            "sweep.ngx",
            "--shard",
            "0/7",
            "--out",
            "run/shards/0",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan.json differs"), "{err}");
    // More shards than the plan has parts.
    let (code, _, err) = nngeo(d, &["exec", "sweep.ngx", "--shard", "0/9", "--out", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("7 independent part(s)"), "{err}");
}

#[test]
fn plan_on_slurm_prints_the_shards_and_the_job_script() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let (code, out, err) = nngeo(
        d,
        &[
            "plan",
            "sweep.ngx",
            "--on",
            "slurm",
            "--out",
            "runs/s",
            "--time",
            "00:10:00",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("7 shard(s) of `sweep`"), "{out}");
    assert!(out.contains("part = \"p2.csv\", s = 2"), "{out}");
    assert!(out.contains("recomputes #"), "{out}");
    assert!(out.contains("#SBATCH --time=00:10:00"), "{out}");
    assert!(out.contains("--shard \"$SLURM_ARRAY_TASK_ID/7\""), "{out}");
    // Every shard's memory estimate is at most the one-process estimate,
    // and the script asks for the largest.
    assert!(out.contains("#SBATCH --mem="), "{out}");
    // Nothing was written.
    assert!(!d.join("runs").exists());
}

#[test]
fn the_cluster_example_is_a_fifteen_task_array() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = nngeo(
        root,
        &[
            "plan",
            "experiments/cluster/ntk_align_seeds.ngx",
            "--on",
            "slurm",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("15 shard(s) of `ntk_align_seeds`"), "{out}");
    assert!(out.contains("noise = 0.5, s = 4"), "{out}");
    assert!(out.contains("\"$SLURM_ARRAY_TASK_ID/15\""), "{out}");
}
