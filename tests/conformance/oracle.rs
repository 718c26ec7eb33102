//! nngeo against NNGeometry's own float64 results (tests/fixtures/oracle,
//! copied from the NNGeometry oracle; see its README for conventions).
//!
//! Every case found in the folder is checked, so new cases need no code:
//! the model is rebuilt from the JSON sidecar's layer list, the weights and
//! inputs come from the safetensors file, and every stored quantity nngeo
//! computes is compared with relative error `max|a−b| / max|b| ≤ 1e-8`.
//!
//! Shared by every backend: the including test crate supplies `TestOps`,
//! `test_ops(dtype)`, `fixtures_dir()` and `mod common` (see
//! `tests/oracle.rs`).

use crate::common::{chain_spec, graph_spec, read_tensors, rel_err};
use crate::{fixtures_dir, test_ops, TestOps};
use nngeo::geometry::build::{BlockKind, Problem, Target};
use nngeo::geometry::init::load_params;
use nngeo::geometry::kernel;
use nngeo::geometry::net::Net;
use nngeo::geometry::ops::Ops;
use nngeo::geometry::repr::Fim;
use nngeo::linalg::Mat;
use nngeo::plan::{Dtype, FisherVariant, ModelSpec, Task};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-8;

struct Case {
    name: String,
    json: Value,
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    path: PathBuf,
    /// The case's network exported by PyTorch (`NAME.f64.onnx`), imported
    /// with `onnx(...)` instead of rebuilt from the sidecar; its weights
    /// are the file's initializers.
    onnx: Option<PathBuf>,
}

fn load_case(json_path: &Path, onnx: Option<PathBuf>) -> Case {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let path = json_path.with_extension("safetensors");
    let tensors = read_tensors(&path);
    let name = json["case"].as_str().unwrap();
    Case {
        name: match &onnx {
            Some(p) => format!("{name} ({})", p.file_name().unwrap().to_string_lossy()),
            None => name.to_string(),
        },
        json,
        tensors,
        path,
        onnx,
    }
}

/// The sidecar's model: a graph (`modules` + `forward.steps`) or a chain
/// (`layers`); or the case's ONNX export.
fn model_spec(case: &Case) -> ModelSpec {
    if let Some(p) = &case.onnx {
        nngeo::onnx::model_spec(p).unwrap_or_else(|e| panic!("{}: {e}", case.name))
    } else if case.json["model"]["forward"].is_object() {
        graph_spec(
            &case.name,
            &case.json["model"],
            &case.tensors["inputs"].0[1..],
        )
    } else {
        chain_spec(
            &case.name,
            &case.json["model"],
            &case.tensors["inputs"].0[1..],
        )
    }
}

/// `max|a−b| / max|b|`, asserting it is at most `tol`.
fn close(case: &str, what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(
        a.len(),
        b.len(),
        "{case} {what}: length {} vs {}",
        a.len(),
        b.len()
    );
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let rel = rel_err(a, b);
    assert!(
        rel <= tol,
        "{case} {what}: relative error {rel:.3e} > {tol:e} (max|ref| = {scale:.3e})"
    );
}

struct Setup {
    o: TestOps,
    net: Net<TestOps>,
    x: <TestOps as Ops>::T,
    labels: Vec<f64>,
    n: usize,
    regression: bool,
}

fn setup(case: &Case) -> Setup {
    let o = test_ops(Dtype::F64);
    let spec = model_spec(case);
    let params = load_params(&spec, case.onnx.as_ref().unwrap_or(&case.path)).unwrap();
    let net = Net::new(&o, &spec, params).unwrap();
    let (shape, inputs) = &case.tensors["inputs"];
    let x = o.upload(shape, inputs).unwrap();
    let regression = case.json["fim"]["call"]
        .as_str()
        .unwrap_or("")
        .contains("regression");
    let labels = if regression {
        case.tensors
            .get("targets")
            .map(|t| t.1.clone())
            .unwrap_or_default()
    } else {
        case.tensors["labels"].1.clone()
    };
    Setup {
        o,
        net,
        x,
        labels,
        n: shape[0],
        regression,
    }
}

impl Setup {
    fn problem(&self, n: usize, batch: usize) -> Problem<'_, TestOps> {
        let x = if n == self.n {
            self.x.clone()
        } else {
            self.o.narrow(&self.x, 0, 0, n).unwrap()
        };
        // Leak the narrowed input: tests are short-lived and Problem borrows it.
        let x: &'static <TestOps as Ops>::T = Box::leak(Box::new(x));
        let target_dim = if self.regression {
            self.labels.len() / self.n
        } else {
            1
        };
        Problem {
            o: &self.o,
            net: &self.net,
            x,
            y: &self.labels,
            target_dim: target_dim.max(1),
            n,
            slots: (0..self.net.slots.len()).collect(),
            batch,
        }
    }
    fn fim_target(&self) -> Target {
        Target::Fim {
            variant: FisherVariant::True,
            task: if self.regression {
                Task::Regression { sigma2: 1.0 }
            } else {
                Task::Classification
            },
        }
    }
}

/// The slots a representation was built over in this case, and its test
/// vector: every layer with `fim/v`, or (sidecar
/// `fim.representation_layer_collection[rep] = "conv_linear"`) the
/// Conv2d/Linear layers of `parameter_ordering.conv_linear` with
/// `fim/v_conv_linear`.
fn collection<'a>(case: &'a Case, s: &Setup, rep: &str) -> (Vec<usize>, &'a [f64]) {
    let all = (0..s.net.slots.len()).collect();
    match case.json["fim"]["representation_layer_collection"][rep].as_str() {
        Some("conv_linear") => {
            let names: Vec<&str> = case.json["parameter_ordering"]["conv_linear"]["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["layer_id"].as_str().unwrap())
                .collect();
            let slots = names
                .iter()
                .map(|n| {
                    s.net
                        .slot(n)
                        .unwrap_or_else(|| panic!("{}: no layer `{n}`", case.name))
                })
                .collect();
            (slots, get(case, "fim/v_conv_linear").unwrap())
        }
        _ => (all, get(case, "fim/v").unwrap()),
    }
}

fn get<'a>(case: &'a Case, key: &str) -> Option<&'a Vec<f64>> {
    case.tensors.get(key).map(|t| &t.1)
}

fn scalar(case: &Case, key: &str) -> Option<f64> {
    get(case, key).map(|v| v[0])
}

/// The folders whose `<case>.json` + `<case>.safetensors` pairs are run:
/// the shipped fixtures, and every folder of `NNGEO_ORACLE_CASES`
/// (separated as `PATH` is), so that further NNGeometry cases run through
/// these tests without being copied into the tree.
fn case_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![fixtures_dir()];
    if let Some(extra) = std::env::var_os("NNGEO_ORACLE_CASES") {
        dirs.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

fn cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in case_dirs() {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("oracle cases in {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.with_extension("safetensors").exists()
            })
            .collect();
        assert!(!here.is_empty(), "no oracle cases in {}", dir.display());
        here.sort();
        paths.extend(here);
    }
    let mut cases = Vec::new();
    for p in &paths {
        cases.push(load_case(p, None));
        // `digits_resnet.json` → `digits_resnet.f64.onnx`.
        let onnx = p.with_extension("f64.onnx");
        if onnx.exists() {
            cases.push(load_case(p, Some(onnx)));
        }
    }
    cases
}

/// Checks every stored quantity of one FIM representation.
fn check_fim(case: &Case, rep: &str, f: &Fim, v: &[f64], checked: &mut Vec<String>) {
    let regul = scalar(case, "fim/solve_regul").unwrap();
    let name = &case.name;
    let key = |q: &str| format!("fim/{rep}/{q}");
    if let Some(t) = scalar(case, &key("trace")) {
        close(name, &key("trace"), &[f.trace().unwrap()], &[t], TOL);
        checked.push(key("trace"));
    }
    if let Some(t) = scalar(case, &key("frobenius_norm")) {
        close(
            name,
            &key("frobenius_norm"),
            &[f.frobenius().unwrap()],
            &[t],
            TOL,
        );
        checked.push(key("frobenius_norm"));
    }
    if let Some(d) = get(case, &key("diag")) {
        close(name, &key("diag"), &f.diag().unwrap(), d, TOL);
        checked.push(key("diag"));
    }
    if let Some(mv) = get(case, &key("mv")) {
        close(name, &key("mv"), &f.mv(v).unwrap(), mv, TOL);
        checked.push(key("mv"));
    }
    if let Some(t) = scalar(case, &key("vTMv")) {
        close(name, &key("vTMv"), &[f.vtmv(v).unwrap()], &[t], TOL);
        checked.push(key("vTMv"));
    }
    if let Some(s) = get(case, &key("solve")) {
        // A solve amplifies round-off by the condition number of F + λI
        // (up to ~1e5 here): compare to the oracle's own accuracy.
        close(name, &key("solve"), &f.solve(v, regul).unwrap(), s, 1e-7);
        checked.push(key("solve"));
    }
    for l in &f.layers {
        if let Some(b) = get(case, &key(&format!("block/{}", l.name))) {
            let one = f.layer(&l.name).unwrap().unwrap();
            close(
                name,
                &key(&format!("block/{}", l.name)),
                &one.to_dense().unwrap().data,
                b,
                TOL,
            );
            checked.push(key("block"));
        }
    }
    if let Some(d) = get(case, &key("dense")) {
        close(name, &key("dense"), &f.to_dense().unwrap().data, d, TOL);
        checked.push(key("dense"));
    }
}

#[test]
fn fim_representations_match_nngeometry() {
    for case in cases() {
        let s = setup(&case);
        let p = s.problem(s.n, s.n);
        let target = s.fim_target();
        let mut checked = Vec::new();

        // Forward pass.
        let out =
            s.o.download(&s.net.forward(&s.o, &s.x, false).unwrap().output)
                .unwrap();
        close(
            &case.name,
            "outputs",
            &out,
            get(&case, "outputs").unwrap(),
            1e-12,
        );

        let v_all = get(&case, "fim/v").unwrap();
        let dense = p.fim_dense(&target).unwrap();
        check_fim(&case, "dense", &dense, v_all, &mut checked);
        if let Some(ev) = get(&case, "fim/dense/evals") {
            let mut ours = dense.eigenvalues().unwrap();
            ours.reverse();
            // Eigenvalues are well-conditioned: absolute error ~ ε‖F‖.
            close(&case.name, "fim/dense/evals", &ours, ev, TOL);
        }
        let kinds = |k| vec![k; s.net.slots.len()];
        check_fim(
            &case,
            "blockdiag",
            &p.fim_blocks(&target, &kinds(BlockKind::Dense)).unwrap(),
            v_all,
            &mut checked,
        );
        check_fim(
            &case,
            "diag",
            &p.fim_blocks(&target, &kinds(BlockKind::Diag)).unwrap(),
            v_all,
            &mut checked,
        );
        // KFAC-type structures over the layers the case built them on (all,
        // or the Conv2d/Linear collection when the model has norm layers).
        let (kslots, kv) = collection(&case, &s, "kfac");
        let kp = Problem {
            slots: kslots.clone(),
            ..s.problem(s.n, s.n)
        };
        let kfac_ok = kslots.iter().all(|&k| s.net.slots[k].kind.kron());
        let kk = |k| vec![k; kslots.len()];
        if kfac_ok {
            let kfac = kp.fim_blocks(&target, &kk(BlockKind::Kfac)).unwrap();
            check_fim(&case, "kfac", &kfac, kv, &mut checked);
            if let nngeo::geometry::repr::FimBody::Blocks(blocks) = &kfac.body {
                for (b, l) in blocks.iter().zip(&kfac.layers) {
                    let nngeo::geometry::repr::Block::Kfac { a, g } = b else {
                        unreachable!()
                    };
                    for (q, m) in [("A", a), ("G", g)] {
                        let m = &*m.as_f64().unwrap();
                        let k = format!("fim/kfac/{q}/{}", l.name);
                        if let Some(r) = get(&case, &k) {
                            close(&case.name, &k, &m.data, r, TOL);
                            checked.push(k);
                        }
                        let k = format!("fim/kfac/evals_{q}/{}", l.name);
                        if let Some(r) = get(&case, &k) {
                            close(&case.name, &k, &nngeo::linalg::eigvalsh(m).unwrap(), r, TOL);
                        }
                    }
                }
            }
            for (rep, refit) in [("ekfac", false), ("ekfac_upd", true)] {
                let e = kp
                    .fim_blocks(&target, &kk(BlockKind::Ekfac { refit }))
                    .unwrap();
                check_fim(&case, rep, &e, kv, &mut checked);
                if let nngeo::geometry::repr::FimBody::Blocks(blocks) = &e.body {
                    for (b, l) in blocks.iter().zip(&e.layers) {
                        let nngeo::geometry::repr::Block::Ekfac { d, .. } = b else {
                            unreachable!()
                        };
                        let k = format!("fim/{rep}/kfe_diag/{}", l.name);
                        if let Some(r) = get(&case, &k) {
                            close(&case.name, &k, &d.data, r, TOL);
                            checked.push(k);
                        }
                    }
                }
            }
            let (qslots, qv) = collection(&case, &s, "quasidiag");
            let qp = Problem {
                slots: qslots.clone(),
                ..s.problem(s.n, s.n)
            };
            check_fim(
                &case,
                "quasidiag",
                &qp.fim_blocks(&target, &vec![BlockKind::QuasiDiag; qslots.len()])
                    .unwrap(),
                qv,
                &mut checked,
            );
        }
        let low = p.fim_lowrank(&target, None).unwrap();
        check_fim(&case, "lowrank", &low, v_all, &mut checked);
        if let Some(ev) = get(&case, "fim/lowrank/evals") {
            let ours = low.eigenvalues().unwrap();
            close(&case.name, "fim/lowrank/evals", &ours[..ev.len()], ev, TOL);
        }
        // Implicit: matrix-free mv and vTMv; its trace through the diagonal pass.
        let (islots, v) = collection(&case, &s, "implicit");
        if let Some(mv) = get(&case, "fim/implicit/mv") {
            let ip = Problem {
                slots: islots,
                ..s.problem(s.n, s.n)
            };
            let ours = ip.implicit_mv(&target, v).unwrap();
            close(&case.name, "fim/implicit/mv", &ours, mv, TOL);
            let vtmv: f64 = ours.iter().zip(v).map(|(a, b)| a * b).sum();
            close(
                &case.name,
                "fim/implicit/vTMv",
                &[vtmv],
                &[scalar(&case, "fim/implicit/vTMv").unwrap()],
                TOL,
            );
            checked.push("fim/implicit/mv".into());
        }
        eprintln!("{}: {} FIM quantities match", case.name, checked.len());
        assert!(
            checked.len() >= 30,
            "{}: only {} quantities were compared",
            case.name,
            checked.len()
        );
    }
}

#[test]
fn batching_does_not_change_the_fim() {
    for case in cases() {
        let s = setup(&case);
        let target = s.fim_target();
        let whole = s.problem(s.n, s.n);
        let split = s.problem(s.n, 7);
        let k = vec![BlockKind::Ekfac { refit: true }; s.net.slots.len()];
        // EKFAC over every layer exists only when every layer has Kronecker
        // factors (no norm layers, grouped convolutions or embeddings); the
        // case's name says nothing about that.
        let kfac_ok = s.net.slots.iter().all(|slot| slot.kind.kron());
        let a = whole.fim_dense(&target).unwrap();
        let b = split.fim_dense(&target).unwrap();
        close(
            &case.name,
            "dense batched",
            &b.to_dense().unwrap().data,
            &a.to_dense().unwrap().data,
            1e-12,
        );
        if kfac_ok {
            let a = whole.fim_blocks(&target, &k).unwrap();
            let b = split.fim_blocks(&target, &k).unwrap();
            close(
                &case.name,
                "ekfac batched",
                &b.to_dense().unwrap().data,
                &a.to_dense().unwrap().data,
                1e-10,
            );
        }
    }
}

#[test]
fn empirical_fisher_matches_nngeometry() {
    for case in cases() {
        let s = setup(&case);
        if s.regression || get(&case, "efim/dense/trace").is_none() {
            continue;
        }
        let p = s.problem(s.n, s.n);
        let target = Target::Fim {
            variant: FisherVariant::Empirical,
            task: Task::Classification,
        };
        let f = p.fim_dense(&target).unwrap();
        let v = get(&case, "fim/v").unwrap();
        close(
            &case.name,
            "efim trace",
            &[f.trace().unwrap()],
            &[scalar(&case, "efim/dense/trace").unwrap()],
            TOL,
        );
        close(
            &case.name,
            "efim diag",
            &f.diag().unwrap(),
            get(&case, "efim/dense/diag").unwrap(),
            TOL,
        );
        close(
            &case.name,
            "efim mv",
            &f.mv(v).unwrap(),
            get(&case, "efim/dense/mv").unwrap(),
            TOL,
        );
        close(
            &case.name,
            "efim frobenius",
            &[f.frobenius().unwrap()],
            &[scalar(&case, "efim/dense/frobenius_norm").unwrap()],
            TOL,
        );
    }
}

#[test]
fn monte_carlo_fisher_is_unbiased() {
    for case in cases() {
        let s = setup(&case);
        let Some(samples) = get(&case, "mc/trace_samples") else {
            continue;
        };
        let p = s.problem(s.n, s.n);
        let exact = p
            .fim_blocks(&s.fim_target(), &vec![BlockKind::Diag; s.net.slots.len()])
            .unwrap()
            .trace()
            .unwrap();
        let reps = 100;
        let traces: Vec<f64> = (0..reps)
            .map(|r| {
                let t = Target::Fim {
                    variant: FisherVariant::Mc {
                        samples: 1,
                        seed: 1000 + r,
                    },
                    task: Task::Classification,
                };
                p.fim_blocks(&t, &vec![BlockKind::Diag; s.net.slots.len()])
                    .unwrap()
                    .trace()
                    .unwrap()
            })
            .collect();
        let mean = traces.iter().sum::<f64>() / reps as f64;
        let sd =
            (traces.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (reps - 1) as f64).sqrt();
        let se = sd / (reps as f64).sqrt();
        assert!(
            (mean - exact).abs() < 4.0 * se,
            "{}: MC mean trace {mean} vs exact {exact} (s.e. {se})",
            case.name
        );
        // The oracle's own MC draws have the same spread as ours.
        let osd = {
            let m = samples.iter().sum::<f64>() / samples.len() as f64;
            (samples.iter().map(|t| (t - m).powi(2)).sum::<f64>() / (samples.len() - 1) as f64)
                .sqrt()
        };
        assert!(
            sd / osd > 0.6 && sd / osd < 1.6,
            "{}: MC spread {sd} vs NNGeometry's {osd}",
            case.name
        );
    }
}

#[test]
fn ntk_and_alignment_match_nngeometry() {
    for case in cases() {
        let s = setup(&case);
        let name = &case.name;
        let c = s.net.outputs();
        // The Jacobian of the first example.
        if let Some(j) = get(&case, "jac/logits") {
            let p = s.problem(1, 1);
            let ours = p.jacobian_rows(&Target::Outputs).unwrap();
            close(name, "jac/logits", &ours.data, j, TOL);
        }
        // Dense NTK on the first n_ntk examples, by both paths.
        if let Some(kref) = get(&case, "ntk/dense") {
            let n_ntk = case.tensors["ntk/dense"].0[1];
            let p = s.problem(n_ntk, n_ntk);
            let k = p.ntk_dense(false).unwrap();
            close(name, "ntk/dense", &k.data, kref, TOL);
            let k2 = p.ntk_dense(true).unwrap();
            close(name, "ntk/dense per-example path", &k2.data, kref, TOL);
            let v = get(&case, "ntk/v").unwrap();
            close(
                name,
                "ntk/mv",
                &k.matvec(v),
                get(&case, "ntk/mv").unwrap(),
                TOL,
            );
            close(
                name,
                "ntk/trace",
                &[k.trace()],
                &[scalar(&case, "ntk/trace").unwrap()],
                TOL,
            );
            close(
                name,
                "ntk/frobenius",
                &[k.frobenius()],
                &[scalar(&case, "ntk/frobenius_norm").unwrap()],
                TOL,
            );
        }
        // All examples.
        let p = s.problem(s.n, s.n);
        let k = p.ntk_dense(false).unwrap();
        let n = s.n;
        let v = get(&case, "ntk_all/v").unwrap();
        close(
            name,
            "ntk_all/trace",
            &[k.trace()],
            &[scalar(&case, "ntk_all/trace").unwrap()],
            TOL,
        );
        close(
            name,
            "ntk_all/frobenius_norm",
            &[k.frobenius()],
            &[scalar(&case, "ntk_all/frobenius_norm").unwrap()],
            TOL,
        );
        close(
            name,
            "ntk_all/diag",
            &k.diag(),
            get(&case, "ntk_all/diag").unwrap(),
            TOL,
        );
        let kv = k.matvec(v);
        close(
            name,
            "ntk_all/mv",
            &kv,
            get(&case, "ntk_all/mv").unwrap(),
            TOL,
        );
        let vkv: f64 = kv.iter().zip(v).map(|(a, b)| a * b).sum();
        close(
            name,
            "ntk_all/vTMv",
            &[vkv],
            &[scalar(&case, "ntk_all/vTMv").unwrap()],
            TOL,
        );
        let mut ev = nngeo::linalg::eigvalsh(&k).unwrap();
        ev.sort_by(f64::total_cmp);
        close(
            name,
            "ntk_all/evals",
            &ev,
            get(&case, "ntk_all/evals").unwrap(),
            TOL,
        );
        let tk = kernel::trace_kernel(&k, c, n);
        close(
            name,
            "ntk_all/trace_kernel",
            &tk.data,
            get(&case, "ntk_all/trace_kernel").unwrap(),
            TOL,
        );
        for (slot, info) in s.net.slots.iter().enumerate() {
            let key = format!("ntk_all/layer_trace_kernel/{}", info.name);
            if let Some(r) = get(&case, &key) {
                let mut pl = s.problem(s.n, s.n);
                pl.slots = vec![slot];
                let kl = pl.ntk_dense(false).unwrap();
                close(name, &key, &kernel::trace_kernel(&kl, c, n).data, r, TOL);
            }
        }
        // Alignment, both of the oracle's conventions.
        if !s.regression {
            let y = get(&case, "onehot").unwrap();
            let mut t = Mat::zeros(n, n);
            for i in 0..n {
                for j in 0..n {
                    t.set(i, j, (0..c).map(|a| y[i * c + a] * y[j * c + a]).sum());
                }
            }
            for (centered, tag) in [(false, "plain"), (true, "centered")] {
                let key = format!("align/ntk_all/trace_kernel/{tag}");
                let ours = kernel::alignment_matrices(&tk, &t, centered);
                close(name, &key, &[ours], &[scalar(&case, &key).unwrap()], TOL);
                let yv = kernel::target_vector(y, n, c);
                let mut yy = Mat::zeros(c * n, c * n);
                for r in 0..c * n {
                    for q in 0..c * n {
                        yy.set(r, q, yv[r] * yv[q]);
                    }
                }
                let key = format!("align/ntk_all/full_kernel/{tag}");
                let ours = kernel::alignment_matrices(&k, &yy, centered);
                close(name, &key, &[ours], &[scalar(&case, &key).unwrap()], TOL);
            }
            // nngeo's own alignment, uncentred, equals the full-kernel one.
            let yv = kernel::target_vector(y, n, c);
            let ours = kernel::alignment(&k, &yv, c, n, false);
            close(
                name,
                "alignment()",
                &[ours],
                &[scalar(&case, "align/ntk_all/full_kernel/plain").unwrap()],
                TOL,
            );
        }
    }
}

/// The float32 export (`NAME.onnx`): its weights are the float64
/// `state_dict` rounded to float32 (relative 6e-8 each), computed here in
/// float64. It agrees with NNGeometry's float64 values to float32
/// precision: outputs, the Fisher's trace and diagonal, the NTK's trace,
/// each within `F32_TOL` = 1e-6 relative (measured: 1e-7 for the outputs).
#[test]
fn float32_onnx_export_agrees_to_its_precision() {
    const F32_TOL: f64 = 1e-6;
    let mut seen = 0;
    let entries = case_dirs()
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()));
    for p in entries {
        let onnx = p.with_extension("onnx");
        if p.extension().is_none_or(|e| e != "json")
            || !p.with_extension("safetensors").exists()
            || !onnx.exists()
        {
            continue;
        }
        let case = load_case(&p, Some(onnx));
        let s = setup(&case);
        let name = &case.name;
        let out =
            s.o.download(&s.net.forward(&s.o, &s.x, false).unwrap().output)
                .unwrap();
        let outputs = get(&case, "outputs").unwrap();
        eprintln!("{name}: outputs rel {:.2e}", rel_err(&out, outputs));
        close(name, "outputs", &out, outputs, F32_TOL);
        let p = s.problem(s.n, s.n);
        let f = p.fim_dense(&s.fim_target()).unwrap();
        let t = scalar(&case, "fim/dense/trace").unwrap();
        eprintln!(
            "{name}: fim trace rel {:.2e}",
            rel_err(&[f.trace().unwrap()], &[t])
        );
        close(
            name,
            "fim/dense/trace",
            &[f.trace().unwrap()],
            &[t],
            F32_TOL,
        );
        let d = get(&case, "fim/dense/diag").unwrap();
        eprintln!(
            "{name}: fim diag rel {:.2e}",
            rel_err(&f.diag().unwrap(), d)
        );
        close(name, "fim/dense/diag", &f.diag().unwrap(), d, F32_TOL);
        let k = p.ntk_dense(false).unwrap();
        let t = scalar(&case, "ntk_all/trace").unwrap();
        eprintln!("{name}: ntk trace rel {:.2e}", rel_err(&[k.trace()], &[t]));
        close(name, "ntk_all/trace", &[k.trace()], &[t], F32_TOL);
        seen += 1;
    }
    assert!(seen > 0, "no float32 ONNX export among the oracle cases");
}
