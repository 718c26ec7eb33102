use super::slurm::{parse_scontrol, JobScript};
use super::state::classify;
use super::*;
use crate::config::SlurmSection;
use crate::plan::shard::{all, needed, owns_results, parse_spec, units, ShardError};
use crate::report::RunState;
use std::collections::{BTreeMap, BTreeSet};

fn compile(src: &str) -> Plan {
    let opts = crate::check::CheckOptions {
        base_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ..Default::default()
    };
    crate::compile_source(src, &opts).unwrap_or_else(|d| panic!("{d:?}"))
}

const SWEEP: &str = r#"
experiment sweep { seed = 0 }
data train = blobs(n = 40, classes = 3, dim = 4, std = 0.5, seed = 1)
model base = mlp(in = 4, hidden = [6], out = 3, init = kaiming(seed = 0))
train base on train as trained {
  optimizer = sgd(lr = 0.1)
  steps = 4
}
measure loss(trained, train) as "base_loss"
for lr in [0.05, 0.5] {
  replicate s in 0..3 {
    model net = mlp(in = 4, hidden = [6], out = 3, init = kaiming(seed = s))
    train net on train {
      optimizer = sgd(lr = lr)
      steps = 4
      every 2 steps { measure loss(net, train) as "loss" }
    }
    measure loss(trained, train) as "again"
  }
}
plot "loss" against step by lr
"#;

#[test]
fn every_result_writing_step_is_in_exactly_one_shard() {
    let plan = compile(SWEEP);
    let u = units(&plan);
    // The shared unit (base's training and its loss), then 2 × 3 points.
    assert_eq!(u.len(), 7, "{u:?}");
    assert_eq!(u[0].label(), "shared");
    assert_eq!(u[1].label(), "lr = 0.05, s = 0");
    for n in [1, 2, 3, 7] {
        let shards = all(&plan, Some(n)).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for sh in &shards {
            for &o in &sh.owned {
                assert!(seen.insert(o, sh.index).is_none(), "step {o} in two shards");
                assert!(sh.runs.contains(&o));
            }
        }
        let writing: Vec<u32> = plan
            .steps
            .iter()
            .filter(|s| owns_results(s))
            .map(|s| s.id.0)
            .collect();
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), writing, "n = {n}");
        // Sizes of contiguous groups differ by at most one unit.
        let sizes: Vec<usize> = shards.iter().map(|s| s.units.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
    }
    // Plots and claims belong to no shard: they are drawn at the merge.
    let plot = plan
        .steps
        .iter()
        .find(|s| matches!(s.op, crate::plan::Op::Plot { .. }))
        .unwrap();
    assert!(all(&plan, None)
        .unwrap()
        .iter()
        .all(|s| !s.runs.contains(&plot.id.0)));
}

#[test]
fn a_sweep_point_recomputes_the_shared_training_it_measures() {
    let plan = compile(SWEEP);
    let shards = all(&plan, None).unwrap();
    let base_train = plan
        .steps
        .iter()
        .find(|s| matches!(s.op, crate::plan::Op::Train { .. }) && s.sweep.is_empty())
        .unwrap()
        .id;
    assert!(shards[0].owned.contains(&base_train.0));
    assert!(shards[0].recomputed.is_empty());
    for sh in &shards[1..] {
        assert!(sh.runs.contains(&base_train.0), "shard {}", sh.index);
        assert_eq!(sh.recomputed, vec![base_train]);
        assert!(sh.flops >= plan.step(base_train).cost.flops);
        assert!(sh.peak_memory <= plan.peak_memory());
    }
    // Hook steps are never owned on their own: they run in their training.
    let hooks: Vec<u32> = plan
        .steps
        .iter()
        .filter(|s| s.hook.is_some())
        .map(|s| s.id.0)
        .collect();
    assert!(!hooks.is_empty());
    let needs = needed(&plan, &hooks.iter().copied().collect());
    assert!(hooks.iter().all(|h| !needs.contains(h)));
}

#[test]
fn shard_specs_and_counts_are_checked() {
    assert_eq!(parse_spec("2/5").unwrap(), (2, 5));
    for bad in ["5/5", "1", "a/2", "1/0", "-1/3"] {
        assert!(
            matches!(parse_spec(bad), Err(ShardError::Syntax { .. })),
            "{bad}"
        );
    }
    let plan = compile(SWEEP);
    let err = crate::plan::shard::shard(&plan, 0, 8).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("7 independent part(s)"), "{text}");
    assert!(text.contains("lr = 0.05, s = 0"), "{text}");
}

#[test]
fn scontrol_lines_give_each_tasks_state() {
    let text = "\
JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=x JobState=CANCELLED Reason=None
JobId=11 ArrayJobId=10 ArrayTaskId=1 JobState=COMPLETED Reason=None
JobId=10 ArrayJobId=10 ArrayTaskId=3-5,7%2 JobState=PENDING Reason=JobArrayTaskLimit
JobId=13 ArrayJobId=10 ArrayTaskId=0 JobState=FAILED ExitCode=1:0
";
    let s = parse_scontrol(text);
    let get = |i: usize| s.get(&i).map(String::as_str);
    assert_eq!(get(0), Some("FAILED"));
    assert_eq!(get(1), Some("COMPLETED"));
    assert_eq!(get(2), Some("CANCELLED"));
    assert_eq!(get(4), Some("PENDING"));
    assert_eq!(get(7), Some("PENDING"));
    assert_eq!(get(6), None);
}

#[test]
fn a_shards_state_prefers_its_finished_folder_then_the_scheduler() {
    let ended = |s: &str| RunState::Ended { status: s.into() };
    assert_eq!(classify(&ended("ok"), Some("COMPLETED")), ShardState::Done);
    assert_eq!(classify(&ended("ok"), None), ShardState::Done);
    assert_eq!(
        classify(&RunState::NoManifest, Some("PENDING")),
        ShardState::Pending
    );
    assert_eq!(
        classify(
            &RunState::Interrupted {
                done: 1,
                total: Some(3)
            },
            Some("CANCELLED")
        ),
        ShardState::Cancelled
    );
    assert_eq!(
        classify(
            &RunState::Interrupted {
                done: 1,
                total: Some(3)
            },
            None
        ),
        ShardState::Interrupted
    );
    let failed = classify(&ended("failed: no such file `x.csv`"), Some("FAILED"));
    assert_eq!(
        failed,
        ShardState::Failed("FAILED: no such file `x.csv`".into())
    );
    assert_eq!(
        classify(&RunState::NoManifest, Some("TIMEOUT")),
        ShardState::Failed("TIMEOUT".into())
    );
    assert_eq!(
        classify(&RunState::NoManifest, None),
        ShardState::NotStarted
    );
    assert!(ShardState::Cancelled.needs_rerun());
    assert!(!ShardState::Pending.needs_rerun());
    assert!(!ShardState::Done.needs_rerun());
}

#[test]
fn task_lists_are_compressed_into_ranges() {
    assert_eq!(list(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    assert_eq!(list(&[4]), "4");
    assert_eq!(list(&[]), "");
}

fn script(resources: SlurmSection) -> String {
    job(resources).render()
}

fn job(resources: SlurmSection) -> JobScript {
    JobScript {
        experiment: "ntk_align".into(),
        plan_hash: "0123456789abcdef0123".into(),
        exe: "/opt/nngeo/bin/nngeo".into(),
        base_dir: "/home/me/study/ntk align".into(),
        run: "/scratch/me/runs/align".into(),
        chdir: "/home/me/study".into(),
        count: 15,
        exec_args: vec![
            "--backend".into(),
            "tch".into(),
            "--device".into(),
            "cuda".into(),
            "--dtype".into(),
            "f32".into(),
        ],
        resources,
        estimated_bytes: 3 * (1 << 30) + 1,
    }
}

#[test]
fn part_job_script_of_a_sharded_step() {
    // `--mem` from one part task's estimate (5 GiB + 1 byte), not the
    // shards' (3 GiB + 1).
    insta::assert_snapshot!(job(SlurmSection::default()).render_part(
        7,
        "diagonal",
        8,
        5 * (1 << 30) + 1
    ));
}

#[test]
fn part_scripts_ask_their_estimate_at_least_1_gib_unless_memory_is_set() {
    let mem = |script: String| {
        script
            .lines()
            .find_map(|l| l.strip_prefix("#SBATCH --mem="))
            .map(String::from)
    };
    let small = job(SlurmSection::default()).render_part(3, "sums", 4, 10 << 20);
    assert_eq!(mem(small).as_deref(), Some("1024M"));
    let set = job(SlurmSection {
        mem: Some("32G".into()),
        ..Default::default()
    })
    .render_part(3, "sums", 4, 100 << 30);
    assert_eq!(mem(set).as_deref(), Some("32G"));
}

#[test]
fn job_script_with_the_estimate_for_memory() {
    insta::assert_snapshot!(script(SlurmSection::default()));
}

#[test]
fn job_script_with_every_resource_set() {
    insta::assert_snapshot!(script(SlurmSection {
        partition: Some("gpu".into()),
        time: Some("04:00:00".into()),
        cpus: Some(8),
        mem: Some("32G".into()),
        gpus: Some(1),
        account: Some("my-lab".into()),
        extra: vec!["--qos=normal".into()],
    }));
}

const SHARDED: &str = r#"
experiment parts { seed = 0 dtype = f64 }
data train = blobs(n = 40, classes = 3, dim = 4, std = 0.5, seed = 1)
model net = mlp(in = 4, hidden = [6], out = 3, init = kaiming(seed = 0))
train net on train as trained {
  optimizer = sgd(lr = 0.1)
  steps = 4
}
let F = Fim(EKFAC) of trained on train sharded(4)
let D = Fim(Dense) of trained on train sharded(2)
let K = Ntk(Dense) of trained on train sharded(4)
let g = grad(trained, train sharded(5))
measure trace(F), trace(D), trace(K), norm(g)
"#;

#[test]
fn plan_on_slurm_shows_each_part_tasks_memory_and_flops() {
    let plan = compile(SHARDED);
    let sharded = crate::plan::parts::sharded_steps(&plan);
    let stages: Vec<Vec<(&str, usize)>> = sharded
        .iter()
        .map(|s| s.stages.iter().map(|st| (st.name, st.parts)).collect())
        .collect();
    assert_eq!(
        stages,
        vec![
            vec![("factors", 4), ("diagonal", 4)],
            vec![("sums", 2)],
            vec![("kernel", 10)],
            vec![("sums", 5)],
        ]
    );
    insta::assert_snapshot!(parts::render_plan(&plan, &sharded));
    let train = plan
        .steps
        .iter()
        .find(|s| matches!(s.op, crate::plan::Op::Train { .. }))
        .unwrap();
    for sh in &sharded {
        let step = plan.step(sh.step);
        let deps: BTreeSet<u32> = step.deps.iter().map(|d| d.0).collect();
        let before = needed(&plan, &deps);
        assert!(
            before.contains(&train.id.0),
            "a part task recomputes the training"
        );
        let deps_flops: u64 = before
            .iter()
            .map(|&i| plan.step(crate::plan::StepId(i)).cost.flops)
            .sum();
        let costs = parts::stage_costs(&plan, sh);
        for (st, c) in sh.stages.iter().zip(&costs) {
            // One part's own FLOPs: a fraction of the whole step's.
            let own = c.flops - deps_flops;
            assert!(
                own > 0 && own < step.cost.flops,
                "{} {}: {own} of {}",
                step.id.0,
                st.name,
                step.cost.flops
            );
            assert!(c.peak_memory >= plan.peak_memory_of(&before));
            assert!(c.examples < 40);
        }
    }
    // A dense Fisher over half the examples: half the FLOPs of its
    // Jacobians and products, the same p² result.
    let dense = &sharded[1];
    let c = crate::plan::parts::part_cost(&plan, dense, 1);
    assert_eq!(c.examples, 20);
    // The gradient over 8 of 40 examples: a fifth of its FLOPs.
    let g = &sharded[3];
    let c = crate::plan::parts::part_cost(&plan, g, 1);
    assert_eq!(c.examples, 8);
    let step = plan.step(g.step);
    let deps: BTreeSet<u32> = step.deps.iter().map(|d| d.0).collect();
    let deps_flops: u64 = needed(&plan, &deps)
        .iter()
        .map(|&i| plan.step(crate::plan::StepId(i)).cost.flops)
        .sum();
    assert_eq!(c.flops - deps_flops, step.cost.flops / 5);
}

#[test]
fn status_counts_parts_from_their_files_and_slurm() {
    let plan = compile(SHARDED);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    let sharded = crate::plan::parts::sharded_steps(&plan);
    let (ekfac, grad) = (sharded[0].step, sharded[3].step);
    // Nothing yet, no scheduler: every part not started.
    let none = parts::part_states(run, &plan, None, &Default::default());
    assert_eq!(none.len(), 5);
    assert!(none.iter().all(|s| s.with("not started").len() == s.parts));
    // EKFAC's factors all written, two of the gradient's five.
    let touch = |step, stage: &str, j, k| {
        let f = crate::plan::parts::part_file(run, step, stage, j, k);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"").unwrap();
    };
    for j in 0..4 {
        touch(ekfac, "factors", j, 4);
    }
    touch(grad, "sums", 0, 5);
    touch(grad, "sums", 3, 5);
    let mut sf = ShardsFile::new(&plan, Path::new("parts.ngx"), &all(&plan, None).unwrap());
    let sub =
        |step: crate::plan::StepId, stage: &str, job: &str, tasks: Vec<usize>| PartSubmission {
            step: step.0,
            stage: stage.into(),
            job_id: job.into(),
            tasks,
            submitted: String::new(),
        };
    sf.part_submissions = vec![
        sub(ekfac, "factors", "10", (0..4).collect()),
        sub(ekfac, "diagonal", "11", (0..4).collect()),
        sub(grad, "sums", "12", (0..5).collect()),
        // A resume of the gradient's part 1.
        sub(grad, "sums", "13", vec![1]),
    ];
    let mut slurm: BTreeMap<String, BTreeMap<usize, String>> = BTreeMap::new();
    slurm.insert(
        "11".into(),
        (0..4)
            .map(|j| (j, if j == 0 { "RUNNING" } else { "PENDING" }.to_string()))
            .collect(),
    );
    slurm.insert(
        "12".into(),
        [
            (0, "COMPLETED"),
            (1, "FAILED"),
            (2, "CANCELLED"),
            (3, "COMPLETED"),
            (4, "COMPLETED"),
        ]
        .into_iter()
        .map(|(j, w)| (j, w.to_string()))
        .collect(),
    );
    slurm.insert(
        "13".into(),
        [(1, "PENDING".to_string())].into_iter().collect(),
    );
    let st = parts::part_states(run, &plan, Some(&sf), &slurm);
    let by = |step: crate::plan::StepId, stage: &str| {
        st.iter()
            .find(|s| s.step == step.0 && s.stage == stage)
            .unwrap()
    };
    let f1 = by(ekfac, "factors");
    assert_eq!(f1.with("done"), vec![0, 1, 2, 3]);
    let f2 = by(ekfac, "diagonal");
    assert_eq!(
        (f2.with("running"), f2.with("pending")),
        (vec![0], vec![1, 2, 3])
    );
    assert!(f2.rerun().is_empty());
    assert_eq!(f2.live_jobs(), vec!["11".to_string()]);
    let g = by(grad, "sums");
    assert_eq!(g.with("done"), vec![0, 3]);
    // Part 1 failed in job 12 but waits again in job 13.
    assert_eq!(g.with("pending"), vec![1]);
    assert_eq!(g.with("cancelled"), vec![2]);
    // Completed without its file: failed.
    assert_eq!(g.with("failed"), vec![4]);
    assert_eq!(g.rerun(), vec![2, 4]);
    assert_eq!(g.jobs[1].as_deref(), Some("13_1"));
    std::fs::create_dir_all(run.join("slurm/logs")).unwrap();
    std::fs::write(run.join("slurm/logs/12_4.out"), "error: out of disk\n").unwrap();
    let text = parts::render_states(run, &st);
    let shown = text.replace(&run.display().to_string(), "RUN");
    insta::assert_snapshot!(shown);
}
