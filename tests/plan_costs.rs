//! Memory estimates follow each representation's storage exactly, and hook
//! schedules fire where they say.

use nngeo::check::CheckOptions;
use nngeo::plan::{HookSchedule, Op, Plan};

fn plan(src: &str) -> Plan {
    let opts = CheckOptions {
        default_budget: 1 << 40,
        ..CheckOptions::default()
    };
    nngeo::compile_source(src, &opts)
        .unwrap_or_else(|d| panic!("{}", nngeo::diag::render("t.ngx", src, &d)))
}

/// Memory of the representation steps, in order.
fn repr_memory(p: &Plan) -> Vec<u64> {
    p.steps
        .iter()
        .filter(|s| matches!(s.op, Op::Repr { .. }))
        .map(|s| s.cost.memory)
        .collect()
}

const CNN: &str = r#"
experiment t { dtype = f64 }
data d = digits(split = test) |> take(7)
model net = sequential(conv2d(1, 4, kernel = 3, padding = 1), relu, conv2d(4, 4, kernel = 3), relu,
                       flatten, linear(144, 10), input = [1, 8, 8])
"#;

#[test]
fn fisher_memory_matches_storage() {
    let src = format!(
        "{CNN}\nfor S in [Dense, BlockDiag, Diag, KFAC, EKFAC, QuasiDiag, LowRank(rank = 3)] {{ measure trace(Fim(S) of net on d) }}"
    );
    let mem = repr_memory(&plan(&src));
    // p per layer: conv 1→4 k3: 40, conv 4→4 k3: 148, linear 144→10: 1450.
    let (p0, p1, p2) = (40u64, 148u64, 1450u64);
    let p = p0 + p1 + p2;
    assert_eq!(p, 1638);
    // (s_A, s_G) per layer, bias as the last input index.
    let kfac = (10 * 10 + 4 * 4) + (37 * 37 + 4 * 4) + (145 * 145 + 10 * 10);
    let ekfac = kfac + (10 * 4 + 37 * 4 + 145 * 10);
    assert_eq!(
        mem,
        vec![
            p * p * 8,
            (p0 * p0 + p1 * p1 + p2 * p2) * 8,
            p * 8,
            kfac * 8,
            ekfac * 8,
            2 * p * 8,
            3 * p * 8,
        ]
    );
}

#[test]
fn ntk_memory_is_n_c_squared() {
    let src = format!("{CNN}\nmeasure trace(Ntk(Dense) of net on d), trace(Ntk(Diag) of net on d)");
    // n = 7 examples, C = 10 outputs, f64.
    assert_eq!(repr_memory(&plan(&src)), vec![70 * 70 * 8, 70 * 8]);
}

#[test]
fn f32_dense_representations_are_held_in_f32() {
    // A float32 run keeps a dense Fisher, BlockDiag's blocks and a dense
    // NTK in f32 (half the bytes of an f64 run's); KFAC's factors, EKFAC's
    // bases and a diagonal stay in f64, so they take what an f64 run's do.
    let body = "measure trace(Fim(Dense) of net on d), trace(Fim(BlockDiag) of net on d), \
                trace(Fim(KFAC) of net on d), trace(Fim(Diag) of net on d), \
                trace(Ntk(Dense) of net on d)";
    let src = format!("{CNN}\n{body}");
    let wide = repr_memory(&plan(&src));
    let narrow = repr_memory(&plan(&src.replace("dtype = f64", "dtype = f32")));
    assert_eq!(narrow[0] * 2, wide[0], "Dense");
    assert_eq!(narrow[0], 1638 * 1638 * 4);
    assert_eq!(narrow[1] * 2, wide[1], "BlockDiag");
    assert_eq!(narrow[2..4], wide[2..4], "KFAC and Diag in f64");
    assert_eq!(narrow[4] * 2, wide[4], "NTK");
}

#[test]
fn over_budget_is_refused_with_the_size() {
    let src = "experiment t { memory_budget = 1MiB }\ndata d = digits()\n\
               model m = mlp(in = 64, hidden = [512], out = 10)\nmeasure trace(Fim(Dense) of m on d)\n";
    let err = nngeo::compile_source(src, &CheckOptions::default()).unwrap_err();
    let text = nngeo::diag::render("t.ngx", src, &err);
    // p = 65·512 + 513·10 = 38410; 38410² · 4 B = 5.5 GiB.
    assert!(
        text.contains("Fim(Dense) needs 5.5 GiB, over the memory budget of 1.0 MiB"),
        "{text}"
    );
    assert!(text.contains("t.ngx:4:"), "{text}");
}

#[test]
fn log_schedule_fires_at_floor_of_powers() {
    let s = HookSchedule::LogSteps {
        start: 5,
        factor: 1.15,
    };
    let steps = s.firing_steps(20, 10);
    // 5, 5.75, 6.61, 7.60, 8.75, 10.06, 11.57, 13.30, 15.30, 17.59, 20.23
    assert_eq!(steps, vec![0, 5, 6, 7, 8, 10, 11, 13, 15, 17]);
    assert_eq!(
        HookSchedule::EverySteps { n: 10 }.firing_steps(25, 5),
        vec![0, 10, 20]
    );
    assert_eq!(
        HookSchedule::EveryEpochs { n: 2 }.firing_steps(25, 5),
        vec![0, 10, 20]
    );
    assert_eq!(HookSchedule::End.firing_steps(25, 5), vec![25]);
    // The count a regular schedule gives without listing its steps.
    for s in [
        HookSchedule::EverySteps { n: 10 },
        HookSchedule::EverySteps { n: 7 },
        HookSchedule::EveryEpochs { n: 2 },
        HookSchedule::EveryEpochs { n: 3 },
        HookSchedule::Start,
    ] {
        for (total, per_epoch) in [(0, 5), (25, 5), (30, 5), (29, 1)] {
            assert_eq!(
                s.fire_count(total, per_epoch),
                s.firing_steps(total, per_epoch).len() as u64,
                "{s:?} over {total} steps"
            );
        }
    }
    assert_eq!(
        HookSchedule::EverySteps { n: 5 }.fire_count(1 << 40, 1),
        (1 << 40) / 5 + 1
    );
}

#[test]
fn training_length_and_hook_counts() {
    let src = "experiment t {}\ndata d = digits() |> take(100)\nmodel m = mlp(in = 64, out = 10)\n\
               train m on d { optimizer = sgd(lr = 0.1)\n epochs = 3\n batch = 32\n every 4 steps { measure loss(m, d) } }\n";
    let p = plan(src);
    let train = p
        .steps
        .iter()
        .find(|s| matches!(s.op, Op::Train { .. }))
        .unwrap();
    let Op::Train { config, hooks, .. } = &train.op else {
        unreachable!()
    };
    // ceil(100 / 32) = 4 steps per epoch, 3 epochs.
    assert_eq!(config.total_steps, 12);
    assert_eq!(hooks[0].fires, 4); // steps 0, 4, 8, 12
                                   // The hook's step refers to the live model of this run.
    let hooked = p.step(hooks[0].steps[0]);
    assert_eq!(hooked.hook.unwrap().train, train.id);
    assert!(hooked.deps.contains(&train.id));
}

/// ekfac_optim's shape: training runs one after the other, each with a
/// hook building a block-diagonal Fisher and comparing structures with it.
fn ekfac_optim_like(optimisers: &[&str]) -> String {
    format!(
        "experiment t {{ dtype = f32 }}\n\
         data train = digits(split = train) |> normalize\n\
         data probe = train |> take(100, random, seed = 4)\n\
         model net = mlp(data = train, hidden = [64, 64], act = tanh, init = xavier(seed = 0))\n\
         for opt in [{}] {{\n\
           train net on train {{\n\
             optimizer = opt\n steps = 20\n batch = 128\n\
             every 10 steps {{\n\
               let B = Fim(BlockDiag) of net on probe\n\
               for S in [Diag, KFAC, EKFAC(refit = true)] {{\n\
                 measure rel_error(Fim(S) of net on probe, B) as \"rel_error/{{S}}\"\n\
               }}\n\
             }}\n\
           }}\n\
         }}\n",
        optimisers.join(", ")
    )
}

#[test]
fn hook_results_are_not_held_after_their_training_run() {
    // The executor drops a training run's hook results when it ends: a
    // second, third and fourth run do not add a block-diagonal Fisher each.
    let one = plan(&ekfac_optim_like(&["sgd(lr = 0.1) as \"sgd\""])).peak_memory();
    let four = plan(&ekfac_optim_like(&[
        "sgd(lr = 0.1) as \"sgd\"",
        "adam(lr = 1e-3) as \"adam\"",
        "ngd(fim = KFAC, lr = 0.05, damping = 1e-2, refresh = 20) as \"kfac\"",
        "ngd(fim = EKFAC, lr = 0.05, damping = 1e-2, refresh = 20, refit = 5) as \"ekfac\"",
    ]))
    .peak_memory();
    // p = 4160 + 4160 + 650: the block-diagonal Fisher is 267 MiB in f64.
    let blockdiag = (2 * 4160u64 * 4160 + 650 * 650) * 8;
    assert!(
        four < one + blockdiag / 4,
        "four runs {four} B, one run {one} B: hook results counted as held after their run"
    );
}

#[test]
fn rel_error_of_block_structures_needs_two_copies_of_the_largest_block() {
    let p = plan(&ekfac_optim_like(&["sgd(lr = 0.1) as \"sgd\""]));
    let largest = 4160u64 * 4160 * 8;
    let dense = 8970u64 * 8970 * 8;
    let rel_errors: Vec<u64> = p
        .steps
        .iter()
        .filter(|s| matches!(&s.op, Op::Measure { key, .. } if key.starts_with("rel_error")))
        .map(|s| s.cost.peak)
        .collect();
    assert_eq!(rel_errors.len(), 3);
    for peak in rel_errors {
        // Compared block by block: never the whole p × p matrix, twice.
        assert!(peak >= 2 * largest, "{peak} below two blocks");
        assert!(
            peak < 2 * largest + (8 << 20),
            "{peak} B, two dense copies are {}",
            2 * dense
        );
    }
}

/// The libtorch plugin's process holds libtorch itself (about 500 MB
/// resident on the CPU) and fragments its heap more than candle's
/// allocator: the same plan run by `tch` is estimated above candle's by at
/// least that base, and its working memory by the larger headroom.
#[test]
fn the_backend_that_runs_a_plan_sets_its_process_memory() {
    let src = format!("{CNN}\nmeasure trace(Fim(KFAC) of net on d)");
    let candle = plan(&src);
    let mut tch = candle.clone();
    tch.experiment.backend = "tch".into();
    let (c, t) = (candle.peak_memory(), tch.peak_memory());
    let (cb, tb) = (candle.process().base, tch.process().base);
    assert!(tb >= cb + (512 << 20), "tch base {tb}, candle base {cb}");
    assert!(
        t - tb > c - cb,
        "working memory: tch {} vs candle {}",
        t - tb,
        c - cb
    );
    let mut plugin = candle.clone();
    plugin.experiment.backend = "plugin:candle".into();
    assert_eq!(plugin.peak_memory(), c);
}
