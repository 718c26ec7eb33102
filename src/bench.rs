//! `nngeo bench`: medians of the representation builders on the sizes the
//! NNGeometry comparison uses, with achieved GFLOP/s next to a plain matmul
//! of similar size, and the peak memory of each case in a fresh process.

use crate::backend::candle::CandleOps;
use crate::engine::device_update::{refresh_buffers, DeviceUpdate, UpdateAt};
use crate::geometry::build::{BlockKind, Problem, Target};
use crate::geometry::init::init_params;
use crate::geometry::net::Net;
use crate::geometry::ops::Ops;
use crate::plan::{Dtype, FisherVariant, Op, Task};
use std::time::Instant;

/// One benchmark case.
pub struct Case {
    pub name: &'static str,
    pub what: &'static str,
    /// NNGeometry's median on a 2-core machine like ours (seconds), if known.
    pub reference: Option<f64>,
}

pub const CASES: &[Case] = &[
    Case {
        name: "matmul-1024",
        what: "plain f32 matmul 1024×1024×1024 (baseline)",
        reference: None,
    },
    Case {
        name: "matmul-ntk",
        what: "plain f32 matmul 1000×512×1000 (one NTK block)",
        reference: None,
    },
    Case {
        name: "kfac",
        what: "Fim(KFAC), MLP 784-512-512-10, n = 1000",
        reference: Some(0.14),
    },
    Case {
        name: "ekfac",
        what: "Fim(EKFAC) without refit, same",
        reference: Some(0.20),
    },
    Case {
        name: "ekfac-refit",
        what: "Fim(EKFAC(refit = true)), same",
        reference: Some(0.50),
    },
    Case {
        name: "diag",
        what: "Fim(Diag), same",
        reference: Some(0.16),
    },
    Case {
        name: "blockdiag",
        what: "Fim(BlockDiag), MLP 64-64-64-10, n = 500",
        reference: None,
    },
    Case {
        name: "dense",
        what: "Fim(Dense), MLP 64-64-64-10, n = 500",
        reference: Some(5.5),
    },
    Case {
        name: "ntk-100",
        what: "Ntk(Dense), MLP 784-512-512-10, n = 100",
        reference: Some(0.15),
    },
    Case {
        name: "ntk-1000",
        what: "Ntk(Dense), MLP 784-512-512-10, n = 1000",
        reference: Some(4.9),
    },
    Case {
        name: "ntk-2000",
        what: "Ntk(Dense), MLP 784-512-512-10, n = 2000",
        reference: None,
    },
    Case {
        name: "exec-kfac",
        what: "`nngeo exec` of Fim(KFAC) as `kfac` (whole process: data, model, build, trace)",
        reference: None,
    },
    Case {
        name: "exec-ekfac-refit",
        what: "`nngeo exec` of Fim(EKFAC(refit = true)) as `ekfac-refit`",
        reference: None,
    },
    Case {
        name: "exec-diag",
        what: "`nngeo exec` of Fim(Diag) as `diag`",
        reference: None,
    },
    Case {
        name: "exec-kfac-5000",
        what: "`nngeo exec` of Fim(KFAC), MLP 784-512-512-10, n = 5000",
        reference: None,
    },
    Case {
        name: "exec-ntk-1000",
        what: "`nngeo exec` of Ntk(Dense) as `ntk-1000`",
        reference: None,
    },
    Case {
        name: "exec-ntk-2000",
        what: "`nngeo exec` of Ntk(Dense) as `ntk-2000`",
        reference: None,
    },
    Case {
        name: "exec-resnet18-kfac-1000",
        what: "`nngeo exec` of Fim(KFAC) of conv/linear layers, ResNet18, n = 1000 CIFAR-format images",
        reference: None,
    },
    Case {
        name: "exec-resnet18-ekfac-refit-1000",
        what: "`nngeo exec` of Fim(EKFAC(refit = true)) of conv/linear layers, same",
        reference: None,
    },
    Case {
        name: "exec-resnet18-ntk-100",
        what: "`nngeo exec` of Ntk(Dense), ResNet18, n = 100 CIFAR-format images",
        reference: None,
    },
    Case {
        name: "resnet18-kfac",
        what: "Fim(KFAC) of conv/linear layers, ResNet18 (CIFAR stem, 32×32, 10 classes), n = 256",
        reference: None,
    },
    Case {
        name: "resnet18-ekfac-refit",
        what: "Fim(EKFAC(refit = true)) of conv/linear layers, same",
        reference: None,
    },
    Case {
        name: "resnet18-diag",
        what: "Fim(Diag) of every layer, same",
        reference: None,
    },
    Case {
        name: "resnet18-ntk-100",
        what: "Ntk(Dense), ResNet18, n = 100",
        reference: None,
    },
    Case {
        name: "resnet18-sgd-128",
        what: "one SGD step (training-mode BatchNorm), ResNet18, batch 128",
        reference: None,
    },
];

/// Where the SGD case updates the weights: the backend's choice (what a
/// training run does), or `$NNGEO_BENCH_UPDATE` = `host` / `device` to
/// time the other side on the same machine.
fn update_at<O: Ops>(o: &O) -> UpdateAt {
    match std::env::var("NNGEO_BENCH_UPDATE").as_deref() {
        Ok("host") => UpdateAt::Host,
        Ok("device") => UpdateAt::Device,
        _ => UpdateAt::of(o),
    }
}

/// The ResNet18 cases' width (channels of the first stage; torchvision:
/// 64): `$NNGEO_BENCH_WIDTH` scales them down for a laptop.
pub fn resnet_width() -> usize {
    std::env::var("NNGEO_BENCH_WIDTH")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(64)
}

/// ResNet18 from the model library (CIFAR stem) on `n` random 3×32×32
/// images.
fn resnet18<O: Ops>(o: &O, n: usize) -> (Setup<O>, crate::plan::ModelSpec) {
    let src = format!(
        "experiment b {{ dtype = f32 }}\nmodel net = resnet18(classes = 10, stem = cifar, input = [3, 32, 32], width = {})\n",
        resnet_width()
    );
    let spec = model_of(&src);
    let o = o.clone();
    let net = Net::new(&o, &spec, init_params(&spec, &spec.init)).expect("net");
    let mut rng = crate::rng::Rng::new(0);
    let xs: Vec<f64> = (0..n * 3 * 32 * 32).map(|_| rng.normal()).collect();
    let y = (0..n).map(|_| rng.below(10) as f64).collect();
    let x = o.upload(&[n, 3, 32, 32], &xs).expect("upload");
    (
        Setup {
            o,
            net,
            x,
            y,
            n,
            widths: vec![],
        },
        spec,
    )
}

struct Setup<O: Ops> {
    o: O,
    net: Net<O>,
    x: O::T,
    y: Vec<f64>,
    n: usize,
    widths: Vec<usize>,
}

/// The model an `.ngx` source declares (the benchmark's own sources).
fn model_of(src: &str) -> crate::plan::ModelSpec {
    let plan = crate::compile_source(src, &Default::default()).expect("benchmark model compiles");
    plan.steps
        .iter()
        .find_map(|s| match &s.op {
            Op::Model { spec, .. } => Some(spec.clone()),
            _ => None,
        })
        .expect("a model step")
}

fn mlp<O: Ops>(o: &O, widths: &[usize], n: usize) -> Setup<O> {
    let hidden: Vec<String> = widths[1..widths.len() - 1]
        .iter()
        .map(|w| w.to_string())
        .collect();
    let src = format!(
        "experiment b {{ dtype = f32 }}\nmodel net = mlp(in = {}, hidden = [{}], out = {})\n",
        widths[0],
        hidden.join(", "),
        widths[widths.len() - 1]
    );
    let spec = model_of(&src);
    let o = o.clone();
    let net = Net::new(&o, &spec, init_params(&spec, &spec.init)).expect("net");
    let mut rng = crate::rng::Rng::new(0);
    let xs: Vec<f64> = (0..n * widths[0]).map(|_| rng.normal()).collect();
    let c = widths[widths.len() - 1];
    let y = (0..n).map(|_| rng.below(c) as f64).collect();
    let x = o.upload(&[n, widths[0]], &xs).expect("upload");
    Setup {
        o,
        net,
        x,
        y,
        n,
        widths: widths.to_vec(),
    }
}

impl<O: Ops> Setup<O> {
    fn problem(&self) -> Problem<'_, O> {
        Problem {
            o: &self.o,
            net: &self.net,
            x: &self.x,
            y: &self.y,
            target_dim: 1,
            n: self.n,
            slots: (0..self.net.slots.len()).collect(),
            batch: self.n,
        }
    }
    /// Σ over layers of in·out (with bias column) and the list of (sa, sg).
    fn layers(&self) -> Vec<(f64, f64)> {
        self.widths
            .windows(2)
            .map(|w| ((w[0] + 1) as f64, w[1] as f64))
            .collect()
    }
}

const TRUE_FISHER: Target = Target::Fim {
    variant: FisherVariant::True,
    task: Task::Classification,
};

/// Runs `name` once on the built-in candle backend (CPU, f32).
pub fn run_once(name: &str) -> Result<(f64, f64, f64), String> {
    let o = CandleOps::new("cpu", Dtype::F32).map_err(|e| e.to_string())?;
    run_once_on(&o, name)
}

/// Runs `name` once on any backend's tensor operations (the `tch` plugin
/// crate's `nngeo-tch-bench` uses this for libtorch on CPU and CUDA);
/// returns (seconds, estimated FLOPs, stored bytes: a Fisher's f64 values
/// on the host, a kernel's in its precision). The time ends when the
/// result is on the host, so asynchronous devices are timed fully.
pub fn run_once_on<O: Ops>(o: &O, name: &str) -> Result<(f64, f64, f64), String> {
    let big = || mlp(o, &[784, 512, 512, 10], 1000);
    let small = || mlp(o, &[64, 64, 64, 10], 500);
    let e = |x: crate::geometry::ops::OpsError| x.to_string();
    Ok(match name {
        "matmul-1024" | "matmul-ntk" => {
            let (m, k, n) = if name == "matmul-1024" {
                (1024, 1024, 1024)
            } else {
                (1000, 512, 1000)
            };
            let a = o.upload(&[m, k], &vec![0.5; m * k]).map_err(e)?;
            let b = o.upload(&[k, n], &vec![0.25; k * n]).map_err(e)?;
            let t = Instant::now();
            let c = o.matmul(&a, &b).map_err(e)?;
            // One element back to the host: waits for a GPU to finish.
            let one = o.narrow(&c, 0, 0, 1).map_err(e)?;
            o.download(&o.narrow(&one, 1, 0, 1).map_err(e)?)
                .map_err(e)?;
            let s = t.elapsed().as_secs_f64();
            drop(c);
            (s, 2.0 * (m * k * n) as f64, (m * n * 4) as f64)
        }
        "kfac" | "ekfac" | "ekfac-refit" | "diag" | "blockdiag" => {
            let s = if name == "blockdiag" { small() } else { big() };
            let kind = match name {
                "kfac" => BlockKind::Kfac,
                "ekfac" => BlockKind::Ekfac { refit: false },
                "ekfac-refit" => BlockKind::Ekfac { refit: true },
                "diag" => BlockKind::Diag,
                _ => BlockKind::Dense,
            };
            let p = s.problem();
            let t = Instant::now();
            let f = p
                .fim_blocks(&TRUE_FISHER, &vec![kind; s.net.slots.len()])
                .map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let (n, m) = (s.n as f64, 9.0);
            let lay = s.layers();
            let mut flops: f64 = lay.iter().map(|(a, g)| 2.0 * n * a * g * (1.0 + m)).sum();
            // A symmetric sum `Σ xᵀx` of width k is counted as its
            // triangle, k(k+1) per row (BLAS's `syrk` convention), since
            // that is what is computed (geometry/gram.rs).
            let sym = |k: f64| k * (k + 1.0);
            flops += match kind {
                BlockKind::Kfac | BlockKind::Ekfac { .. } => lay
                    .iter()
                    .map(|(a, g)| n * sym(*a) + m * n * sym(*g))
                    .sum::<f64>(),
                BlockKind::Diag => lay.iter().map(|(a, g)| 2.0 * n * a * g).sum(),
                _ => lay.iter().map(|(a, g)| m * n * sym(a * g)).sum(),
            };
            if let BlockKind::Ekfac { refit } = kind {
                // Eigendecompositions (~9 s³ each, f64 on the host), and the refit's rotations.
                flops += lay
                    .iter()
                    .map(|(a, g)| 9.0 * (a.powi(3) + g.powi(3)))
                    .sum::<f64>();
                if refit {
                    flops += lay
                        .iter()
                        .map(|(a, g)| 2.0 * m * n * g * g + 2.0 * n * a * a + 2.0 * n * a * g)
                        .sum::<f64>();
                }
            }
            (secs, flops, f.stored() as f64 * 8.0)
        }
        "dense" => {
            let s = small();
            let p = s.problem();
            let t = Instant::now();
            let f = p.fim_dense(&TRUE_FISHER).map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let pp = f.dim() as f64;
            let rows = 9.0 * s.n as f64;
            // JᵀJ over the panels on and above the diagonal (≈ half).
            let panels = (pp / 2048.0).ceil();
            let frac = (panels + 1.0) / (2.0 * panels);
            (secs, 2.0 * rows * pp * pp * frac, f.stored() as f64 * 8.0)
        }
        "ntk-100" | "ntk-1000" | "ntk-2000" => {
            let n = match name {
                "ntk-100" => 100,
                "ntk-1000" => 1000,
                _ => 2000,
            };
            let s = mlp(o, &[784, 512, 512, 10], n);
            let p = s.problem();
            let t = Instant::now();
            let k = p
                .ntk_dense_in(false, crate::geometry::ops::keep_of(o))
                .map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let (nf, c) = (n as f64, 10.0);
            let pairs = c * (c + 1.0) / 2.0;
            let flops: f64 = s
                .layers()
                .iter()
                .map(|(a, g)| {
                    pairs * 2.0 * nf * nf * g + 2.0 * nf * nf * a + 2.0 * nf * a * g * (1.0 + c)
                })
                .sum();
            (secs, flops, k.bytes() as f64)
        }
        "resnet18-kfac" | "resnet18-ekfac-refit" | "resnet18-diag" => {
            let (s, spec) = resnet18(o, 256);
            let mut p = s.problem();
            let kind = match name {
                "resnet18-kfac" => BlockKind::Kfac,
                "resnet18-ekfac-refit" => BlockKind::Ekfac { refit: true },
                _ => BlockKind::Diag,
            };
            if kind != BlockKind::Diag {
                // KFAC-type structures cover the conv and linear layers, as NNGeometry's.
                p.slots = s
                    .net
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, sl)| sl.kind.kron())
                    .map(|(i, _)| i)
                    .collect();
            }
            let t = Instant::now();
            let f = p
                .fim_blocks(&TRUE_FISHER, &vec![kind; p.slots.len()])
                .map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            // One forward and a 9-output backward pass (≈ 2× forward each).
            let fwd = crate::plan::cost::forward_flops(&spec) as f64 * s.n as f64;
            (secs, fwd * (1.0 + 2.0 * 9.0), f.stored() as f64 * 8.0)
        }
        "resnet18-ntk-100" => {
            let (s, spec) = resnet18(o, 100);
            let p = s.problem();
            let t = Instant::now();
            let k = p
                .ntk_dense_in(false, crate::geometry::ops::keep_of(o))
                .map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let fwd = crate::plan::cost::forward_flops(&spec) as f64 * 100.0;
            let (nf, c, pp) = (100.0, 10.0, spec.params as f64);
            (
                secs,
                fwd * (1.0 + 2.0 * c) + 2.0 * (nf * c).powi(2) * pp / 2.0,
                k.bytes() as f64,
            )
        }
        "resnet18-sgd-128" => {
            let (s, spec) = resnet18(o, 128);
            let p = s.problem();
            let phase = crate::geometry::net::Phase::Train { seed: 0 };
            let opt = crate::plan::Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            };
            let secs = match update_at(o) {
                UpdateAt::Host => {
                    let t = Instant::now();
                    let (_, g, stats) = p.loss_gradient_in(false, phase).map_err(e)?;
                    let mut params = s.net.params.clone();
                    let w: Vec<f64> = params
                        .flat()
                        .iter()
                        .zip(&g)
                        .map(|(w, g)| w - 0.1 * g)
                        .collect();
                    params.set_flat(&w).map_err(e)?;
                    params.fold_batch_stats(&spec, &stats);
                    let net = s.net.with_params(o, params).map_err(e)?;
                    let secs = t.elapsed().as_secs_f64();
                    drop(net);
                    secs
                }
                UpdateAt::Device => {
                    // The copy (host parameters included) is made before
                    // the clock starts: a training run steps its own.
                    let mut net = s.net.clone();
                    let mut dev = DeviceUpdate::<O>::new();
                    let t = Instant::now();
                    let (loss, grads, stats) =
                        p.loss_gradient_natural_in(false, phase).map_err(e)?;
                    dev.apply(o, &opt, &mut net, grads, &[], 1.0, 0.1, 0, loss)?;
                    refresh_buffers(o, &mut net, &spec, &stats).map_err(e)?;
                    // Finished, as a training step is when its next
                    // forward pass reads the weights.
                    o.download(&net.slot_tensors(0)[0]).map_err(e)?;
                    let secs = t.elapsed().as_secs_f64();
                    drop(net);
                    secs
                }
            };
            let fwd = crate::plan::cost::forward_flops(&spec) as f64 * 128.0;
            (secs, 3.0 * fwd, spec.params as f64 * 4.0)
        }
        other if other.starts_with("exec-") => {
            let t = exec_once(other)?;
            (t.whole_s, f64::NAN, t.peak_bytes)
        }
        other => return Err(format!("no benchmark case `{other}`")),
    })
}

/// The case an `exec-*` case runs through `nngeo exec`, and its example count.
pub fn exec_counterpart(name: &str) -> Option<(&'static str, usize)> {
    Some(match name {
        "exec-kfac" => ("kfac", 1000),
        "exec-ekfac-refit" => ("ekfac-refit", 1000),
        "exec-diag" => ("diag", 1000),
        "exec-kfac-5000" => ("kfac", 5000),
        "exec-ntk-1000" => ("ntk-1000", 1000),
        "exec-ntk-2000" => ("ntk-2000", 2000),
        "exec-resnet18-kfac-1000" => ("resnet18-kfac", 1000),
        "exec-resnet18-ekfac-refit-1000" => ("resnet18-ekfac-refit", 1000),
        "exec-resnet18-ntk-100" => ("resnet18-ntk-100", 100),
        _ => return None,
    })
}

/// How many examples the in-process case `name` builds on.
pub fn case_examples(name: &str) -> usize {
    match name {
        "blockdiag" | "dense" => 500,
        "ntk-100" | "resnet18-ntk-100" => 100,
        "ntk-2000" => 2000,
        "resnet18-kfac" | "resnet18-ekfac-refit" | "resnet18-diag" => 256,
        "resnet18-sgd-128" => 128,
        _ => 1000,
    }
}

/// The CIFAR-10 binary file (`cifar10("images.bin")`) the ResNet18 `exec-*`
/// cases read: `n` records of a label byte and 3×32×32 pixel bytes, drawn
/// from the benchmark's seed, so both sides of a comparison see data of the
/// same shape and scale as CIFAR-10.
pub const EXEC_IMAGES: &str = "images.bin";

fn cifar_bytes(n: usize) -> Vec<u8> {
    let mut rng = crate::rng::Rng::new(0);
    let mut out = Vec::with_capacity(n * 3073);
    for _ in 0..n {
        out.push(rng.below(10) as u8);
        out.extend((0..3072).map(|_| rng.below(256) as u8));
    }
    out
}

/// The `.ngx` file an `exec-*` case runs: the in-process case's network and
/// representation on `n` examples (784-dimensional blobs for the MLP,
/// CIFAR-format images in [`EXEC_IMAGES`] for ResNet18), in f32, measuring
/// its trace.
pub fn exec_source(name: &str) -> Option<String> {
    let (inner, n) = exec_counterpart(name)?;
    let header = "experiment bench {\n  seed = 0\n  dtype = f32\n}\n";
    if let Some(what) = inner.strip_prefix("resnet18-") {
        // KFAC-type structures cover the conv and linear layers, as
        // NNGeometry's do on this network (the norms have no Kronecker form).
        let conv_linear = r#"layers = ["*conv*", "*downsample.0", "fc"]"#;
        let repr = match what {
            "kfac" => format!("Fim(KFAC, {conv_linear})"),
            "ekfac-refit" => format!("Fim(EKFAC(refit = true), {conv_linear})"),
            _ => "Ntk(Dense)".to_string(),
        };
        return Some(format!(
            "{header}data d = cifar10(\"{EXEC_IMAGES}\")\n\
             model net = resnet18(classes = 10, stem = cifar, input = [3, 32, 32], width = {})\n\
             let M = {repr} of net on d\n\
             measure trace(M)\n",
            resnet_width()
        ));
    }
    let repr = match inner {
        "kfac" => "Fim(KFAC)",
        "ekfac-refit" => "Fim(EKFAC(refit = true))",
        "diag" => "Fim(Diag)",
        _ => "Ntk(Dense)",
    };
    Some(format!(
        "{header}data d = blobs(n = {n}, classes = 10, dim = 784, seed = 0)\n\
         model net = mlp(in = 784, hidden = [512, 512], out = 10)\n\
         let M = {repr} of net on d\n\
         measure trace(M)\n"
    ))
}

/// One `nngeo exec` of an `exec-*` case.
#[derive(Clone, Copy, Debug)]
pub struct ExecTiming {
    /// The whole process, start-up to exit.
    pub whole_s: f64,
    /// The representation's own plan step, as its manifest records it.
    pub step_s: f64,
    /// The run's peak resident memory (bytes), from its manifest.
    pub peak_bytes: f64,
}

/// Times one `nngeo exec` of an `exec-*` case's file in a fresh process (the
/// path users take: start-up, data, model, the build, `measure trace(M)`
/// and the run folder), with this executable; the backend follows
/// `NNGEO_BACKEND` as `exec` does.
pub fn exec_once(name: &str) -> Result<ExecTiming, String> {
    let src = exec_source(name).ok_or_else(|| format!("no benchmark case `{name}`"))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("nngeo-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("case.ngx");
    std::fs::write(&file, src).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some((_, n)) = exec_counterpart(name).filter(|(i, _)| i.starts_with("resnet18")) {
        let images = dir.join(EXEC_IMAGES);
        std::fs::write(&images, cifar_bytes(n))
            .map_err(|e| format!("{}: {e}", images.display()))?;
    }
    let out = dir.join("run");
    let t = Instant::now();
    let status = std::process::Command::new(&exe)
        .arg("exec")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let whole_s = t.elapsed().as_secs_f64();
    let manifest = std::fs::read_to_string(out.join(crate::report::MANIFEST_JSON))
        .ok()
        .and_then(|m| serde_json::from_str::<crate::report::Manifest>(&m).ok());
    let _ = std::fs::remove_dir_all(&dir);
    if !status.status.success() {
        return Err(format!(
            "`nngeo exec` failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        ));
    }
    let manifest = manifest.ok_or("`nngeo exec` left no readable manifest")?;
    let step_s = manifest
        .steps
        .iter()
        .find(|s| s.op == "repr")
        .map_or(f64::NAN, |s| s.wall_s);
    let peak_bytes = manifest.peak_memory_bytes.map_or(f64::NAN, |b| b as f64);
    Ok(ExecTiming {
        whole_s,
        step_s,
        peak_bytes,
    })
}

/// Medians of `repeats` runs of an `exec-*` case after one warm-up: the
/// whole process, the representation's step, and the largest peak.
pub fn exec_median(name: &str, repeats: usize) -> Result<ExecTiming, String> {
    exec_once(name)?;
    let runs = (0..repeats.max(1))
        .map(|_| exec_once(name))
        .collect::<Result<Vec<_>, _>>()?;
    let mid = |f: fn(&ExecTiming) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(ExecTiming {
        whole_s: mid(|r| r.whole_s),
        step_s: mid(|r| r.step_s),
        peak_bytes: runs.iter().map(|r| r.peak_bytes).fold(f64::NAN, f64::max),
    })
}

/// Median of `repeats` runs after one warm-up (candle).
pub fn median(name: &str, repeats: usize) -> Result<(f64, f64, f64), String> {
    let o = CandleOps::new("cpu", Dtype::F32).map_err(|e| e.to_string())?;
    median_on(&o, name, repeats)
}

/// Median of `repeats` runs after one warm-up, on any backend's ops.
pub fn median_on<O: Ops>(o: &O, name: &str, repeats: usize) -> Result<(f64, f64, f64), String> {
    run_once_on(o, name)?;
    let mut times = Vec::new();
    let mut last = (0.0, 0.0);
    for _ in 0..repeats.max(1) {
        let (s, f, b) = run_once_on(o, name)?;
        times.push(s);
        last = (f, b);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last.0, last.1))
}
