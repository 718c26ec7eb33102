//! `onnx("net.onnx")`: every supported operator, in the small networks of
//! tests/fixtures/onnx (made by make_onnx.py there, which says what each
//! one holds), against the values PyTorch or onnxruntime computed for
//! them; the backward pass against finite differences; the same network
//! written in `.ngx` and imported from ONNX; and the exports nngeo must
//! refuse, with the error each gives.

use nngeo::geometry::build::{Problem, Target};
use nngeo::geometry::init::load_params;
use nngeo::geometry::net::Net;
use nngeo::geometry::ops::Ops;
use nngeo::onnx::{import, model_spec};
use nngeo::plan::{Dtype, FisherVariant, Task};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type TestOps = nngeo::backend::candle::CandleOps;

#[path = "conformance/common.rs"]
mod common;
use common::{compile_model, read_tensors, rel_err};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn ops() -> TestOps {
    TestOps::new("cpu", Dtype::F64).unwrap()
}

/// The fixtures with reference values: `NAME.onnx` + `NAME.safetensors`.
fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .filter(|p| reference(p).exists())
        .collect();
    v.sort();
    assert!(v.len() >= 5, "fixtures missing in {}", dir().display());
    v
}

/// The reference values of `NAME.onnx` or of its float32 export
/// `NAME.f32.onnx`: `NAME.safetensors`.
fn reference(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy();
    let stem = name.trim_end_matches(".onnx").trim_end_matches(".f32");
    path.with_file_name(format!("{stem}.safetensors"))
}

/// The operator types of a file (what it tests).
fn op_types(path: &Path) -> BTreeSet<String> {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let m = nngeo::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
    m.graph
        .unwrap()
        .node
        .into_iter()
        .map(|n| n.op_type)
        .collect()
}

struct Loaded {
    o: TestOps,
    spec: nngeo::plan::ModelSpec,
    params: nngeo::geometry::net::HostParams,
    net: Net<TestOps>,
    x: <TestOps as Ops>::T,
    n: usize,
}

fn load(path: &Path) -> Loaded {
    let o = ops();
    let spec = model_spec(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let params = load_params(&spec, path).unwrap();
    let net = Net::new(&o, &spec, params.clone()).unwrap();
    let t = read_tensors(&reference(path));
    let (shape, data) = &t["inputs"];
    let x = o.upload(shape, data).unwrap();
    Loaded {
        o,
        spec,
        params,
        net,
        x,
        n: shape[0],
    }
}

impl Loaded {
    fn outputs(&self, net: &Net<TestOps>) -> Vec<f64> {
        let y = net.forward(&self.o, &self.x, false).unwrap().output;
        self.o.download(&y).unwrap()
    }
}

/// Row-wise softmax (`log`: log-softmax) of `[n, c]` values.
fn softmax(z: &[f64], c: usize, log: bool) -> Vec<f64> {
    z.chunks(c)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            r.iter()
                .map(move |v| {
                    if log {
                        v - m - s.ln()
                    } else {
                        (v - m).exp() / s
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Forward: nngeo's outputs against the stored ones (PyTorch float64:
/// 1e-12 relative; onnxruntime's float32 for the `handmade*` graphs, and a float32
/// export's weights (`NAME.f32.onnx`) against float64 PyTorch: 1e-6,
/// measured 1.2e-7). A final
/// (Log)Softmax, which nngeo leaves out, is applied to nngeo's logits.
#[test]
fn forward_matches_pytorch_for_every_fixture() {
    let mut covered = BTreeSet::new();
    for path in fixtures() {
        let l = load(&path);
        let imported = import(&path).unwrap();
        let c = l.spec.outputs();
        let mut ours = l.outputs(&l.net);
        let ops = op_types(&path);
        if ops.contains("Softmax") {
            ours = softmax(&ours, c, false);
        }
        if ops.contains("LogSoftmax") {
            ours = softmax(&ours, c, true);
        }
        let want = &read_tensors(&reference(&path))["outputs"].1;
        let name = path.file_name().unwrap().to_string_lossy();
        let float32 = name.starts_with("handmade") || name.ends_with(".f32.onnx");
        let tol = if float32 { 1e-6 } else { 1e-12 };
        let rel = rel_err(&ours, want);
        eprintln!("{}: forward rel {rel:.2e}", path.display());
        assert!(
            rel <= tol,
            "{}: forward relative error {rel:.2e} > {tol:e}",
            path.display()
        );
        assert!(
            imported
                .warnings
                .iter()
                .all(|w| w.contains("Softmax") || w.contains("deduplicated")),
            "{}: {:?}",
            path.display(),
            imported.warnings
        );
        covered.extend(ops);
    }
    // Every supported operator is in some fixture.
    let missing: Vec<&str> = nngeo::onnx::SUPPORTED_OPS
        .iter()
        .copied()
        .filter(|o| !covered.contains(*o))
        .collect();
    assert!(missing.is_empty(), "operators without a test: {missing:?}");
}

/// Backward: the Jacobian of the outputs with respect to every parameter
/// against central differences of the forward pass (h = 1e-6), per layer,
/// to 1e-6 of the layer's largest entry.
#[test]
fn jacobian_matches_finite_differences_for_every_fixture() {
    for path in fixtures() {
        let l = load(&path);
        let (n, c) = (l.n.min(3), l.spec.outputs());
        let x = l.o.narrow(&l.x, 0, 0, n).unwrap();
        let y = vec![0.0; n];
        let p = Problem::whole(&l.o, &l.net, &x, &y, n);
        let j = p.jacobian_rows(&Target::Outputs).unwrap();
        let w0 = l.params.flat();
        let at = |w: &[f64]| {
            let mut q = l.params.clone();
            q.set_flat(w).unwrap();
            let net = Net::new(&l.o, &l.spec, q).unwrap();
            let out = net.forward(&l.o, &x, false).unwrap().output;
            l.o.download(&out).unwrap()
        };
        let h = 1e-6;
        let mut w = w0.clone();
        for slot in &l.net.slots {
            let mut ours = Vec::new();
            let mut fd = Vec::new();
            for k in slot.offset..slot.offset + slot.numel {
                w[k] = w0[k] + h;
                let zp = at(&w);
                w[k] = w0[k] - h;
                let zm = at(&w);
                w[k] = w0[k];
                for i in 0..n {
                    for a in 0..c {
                        fd.push((zp[i * c + a] - zm[i * c + a]) / (2.0 * h));
                        ours.push(j.get(a * n + i, k));
                    }
                }
            }
            assert!(
                fd.iter().any(|v| v.abs() > 1e-8),
                "{}: {} has no effect on the outputs",
                path.display(),
                slot.name
            );
            let rel = rel_err(&ours, &fd);
            assert!(
                rel <= 1e-6,
                "{}: Jacobian of {}: relative error {rel:.2e}",
                path.display(),
                slot.name
            );
        }
    }
}

/// Layers are named by `state_dict` key and their parameters grouped as
/// NNGeometry's LayerCollection groups them; the parameter order is the
/// `state_dict`'s.
#[test]
fn layers_are_named_and_grouped_by_state_dict_key() {
    let spec = model_spec(&dir().join("preact.onnx")).unwrap();
    let names: Vec<&str> = spec.param_layers().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["stem", "gn1", "shortcut", "conv1", "gn2", "conv2", "head"],
        "state_dict order"
    );
    let exec: Vec<&str> = spec
        .layers
        .iter()
        .filter(|l| l.params > 0)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(exec[2..6], ["conv1", "gn2", "conv2", "shortcut"]);
    let m = import(&dir().join("preact.onnx")).unwrap();
    let keys: Vec<(&str, &str)> = m
        .sources
        .iter()
        .map(|(k, s)| (k.as_str(), s.init.as_str()))
        .collect();
    assert!(keys.contains(&("gn1.weight", "gn1.weight")));
    assert!(keys.contains(&("shortcut.bias", "shortcut.bias")));
    let types: Vec<(&str, &str)> = m
        .layers
        .iter()
        .filter(|l| l.params > 0)
        .map(|l| (l.name.as_str(), l.layer.type_name()))
        .collect();
    assert!(types.contains(&("gn2", "GroupNorm")), "{types:?}");
    assert!(types.contains(&("head", "Linear")), "{types:?}");
    // `x @ W.t() + b` is the linear layer `w`, weight and bias together.
    let e = import(&dir().join("embed.onnx")).unwrap();
    let lin = e.layers.iter().find(|l| l.name == "w").unwrap();
    assert_eq!(lin.layer.type_name(), "Linear");
    assert_eq!(lin.params, 15 * 4 + 4);
    // Equal-valued parameters the exporter deduplicated (fresh
    // BatchNorms) keep their own names and their place in the order.
    let f = model_spec(&dir().join("fresh.onnx")).unwrap();
    let names: Vec<&str> = f.param_layers().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["conv1", "bn1", "conv2", "bn2", "fc"]);
    assert!(op_types(&dir().join("fresh.onnx")).contains("Identity"));
    // A Conv with a 1-D kernel is a Conv1d, its BatchNorm a BatchNorm1d.
    let s = model_spec(&dir().join("seq1d.onnx")).unwrap();
    let types: Vec<&str> = s.param_layers().map(|l| l.layer.type_name()).collect();
    assert_eq!(types, ["Conv1d", "BatchNorm1d", "Linear"]);
}

/// `digits_resnet` written in `.ngx` with the library's `basic` block and
/// imported from its float64 ONNX export: the same layers, parameters
/// and results (outputs, dense Fisher, NTK) to 1e-12.
#[test]
fn ngx_and_onnx_give_the_same_network() {
    let oracle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oracle");
    let onnx = oracle.join("digits_resnet.f64.onnx");
    let o = ops();
    let a = model_spec(&onnx).unwrap();
    let b = compile_model(
        "tiny(input = [1, 8, 8])\n\
         block tiny() {\n\
           conv1 = conv2d(1, 4, kernel = 3, padding = 1, bias = false)\n\
           bn1 = batchnorm2d(4)\n\
           relu = relu\n\
           layer1 = sequential(basic(4, 4))\n\
           layer2 = sequential(basic(4, 8, stride = 2))\n\
           avgpool = adaptive_avgpool2d([1, 1])\n\
           fc = linear(8, 10)\n\
           out(x) = fc(flatten(avgpool(layer2(layer1(relu(bn1(conv1(x))))))))\n\
         }",
    );
    let pa: Vec<_> = a.param_layers().map(|l| (&l.name, &l.layer)).collect();
    let pb: Vec<_> = b.param_layers().map(|l| (&l.name, &l.layer)).collect();
    assert_eq!(pa, pb, "parameterised layers");
    let wa = load_params(&a, &onnx).unwrap();
    let wb = load_params(&b, &oracle.join("digits_resnet.safetensors")).unwrap();
    assert_eq!(wa.flat(), wb.flat(), "parameters");
    // A written model's `weights = "x.onnx"`: the export's parameters by
    // `state_dict` key.
    // (`num_batches_tracked`, not exported, starts at zero.)
    let from_onnx = load_params(&b, &onnx).unwrap();
    let buffers = |w: &nngeo::geometry::net::HostParams| -> Vec<f64> {
        w.tensors
            .iter()
            .filter(|t| !t.key.ends_with("num_batches_tracked"))
            .flat_map(|t| t.data.clone())
            .collect()
    };
    assert_eq!(buffers(&from_onnx), buffers(&wb), "weights from ONNX");
    let t = read_tensors(&oracle.join("digits_resnet.safetensors"));
    let (shape, inputs) = &t["inputs"];
    let x = o.upload(shape, inputs).unwrap();
    let labels = &t["labels"].1;
    let n = shape[0];
    let results = |spec: &nngeo::plan::ModelSpec, w| {
        let net = Net::new(&o, spec, w).unwrap();
        let out = o
            .download(&net.forward(&o, &x, false).unwrap().output)
            .unwrap();
        let p = Problem::whole(&o, &net, &x, labels, n);
        let target = Target::Fim {
            variant: FisherVariant::True,
            task: Task::Classification,
        };
        let f = p.fim_dense(&target).unwrap().to_dense().unwrap().data;
        let k = p.ntk_dense(false).unwrap().data;
        (out, f, k)
    };
    let (ya, fa, ka) = results(&a, wa);
    let (yb, fb, kb) = results(&b, wb);
    for (what, u, v) in [("outputs", &ya, &yb), ("FIM", &fa, &fb), ("NTK", &ka, &kb)] {
        let rel = rel_err(u, v);
        eprintln!("ngx vs onnx {what}: {rel:.2e}");
        assert!(rel <= 1e-12, "{what}: .ngx and ONNX differ by {rel:.2e}");
    }
}

/// Exports nngeo refuses or warns about: the message names the file, the
/// node, its op type and opset, and says what to do.
#[test]
fn bad_exports_are_explained() {
    let err = |f: &str| import(&dir().join(f)).unwrap_err();
    let e = err("bad_abs.onnx");
    let msg = e.to_string();
    for want in ["/Abs", "Abs", "opset 17", "not supported"] {
        assert!(msg.contains(want), "{msg}");
    }
    assert!(e.hint().unwrap().contains("Conv, ConvTranspose"));
    let e = err("bad_param_expr.onnx");
    assert!(e.to_string().contains("parameter `scale`"), "{e}");
    assert!(e.hint().unwrap().contains("not even Dense"));
    let e = err("bad_training.onnx");
    assert!(e.to_string().contains("training mode"), "{e}");
    assert!(e.hint().unwrap().contains("TrainingMode.EVAL"));
    // A folded export imports, with a warning naming the flag.
    let m = import(&dir().join("bad_folded.onnx")).unwrap();
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("do_constant_folding=False") && w.contains("onnx::Conv")),
        "{:?}",
        m.warnings
    );
    // Not a file, not ONNX.
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"\xff\xff\xff not protobuf").unwrap();
    assert!(matches!(
        import(&junk).unwrap_err(),
        nngeo::onnx::OnnxError::Decode { .. }
    ));
    assert!(matches!(
        import(&tmp.path().join("absent.onnx")).unwrap_err(),
        nngeo::onnx::OnnxError::Read { .. }
    ));
}

/// Through the language: `nngeo check` on a file importing a refused
/// export fails with the located error; an accepted one runs end to end.
#[test]
fn the_cli_refuses_bad_exports_and_runs_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("bad_abs.onnx"), tmp.path().join("bad_abs.onnx")).unwrap();
    let resnet = dir().join("../oracle/digits_resnet.f64.onnx");
    std::fs::copy(resnet, tmp.path().join("net.onnx")).unwrap();
    let bin = env!("CARGO_BIN_EXE_nngeo");
    let bad = tmp.path().join("bad.ngx");
    std::fs::write(
        &bad,
        "experiment bad { dtype = f64 }\nmodel net = onnx(\"bad_abs.onnx\")\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("E052") && err.contains("bad_abs.onnx") && err.contains("/Abs"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let good = tmp.path().join("good.ngx");
    std::fs::write(
        &good,
        "experiment good { dtype = f64 }\n\
         data probe = digits(split = test) |> take(16)\n\
         model net = onnx(\"net.onnx\")\n\
         let F = Fim(mix(linear = KFAC, conv = KFAC, norm = BlockDiag)) of net on probe\n\
         measure trace(F), trace(F[\"layer2.0.downsample.0\"])\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["exec", good.to_str().unwrap(), "--out"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Corrupted files (truncated, bytes changed) give an error or a model,
/// never a panic: 4000 variants of the fixtures.
#[test]
fn corrupted_files_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let files: Vec<Vec<u8>> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let path = tmp.path().join("m.onnx");
    for round in 0..4000 {
        let mut b = files[round % files.len()].clone();
        match next() % 3 {
            0 => b.truncate((next() as usize) % b.len()),
            _ => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
            }
        }
        std::fs::write(&path, &b).unwrap();
        let r = std::panic::catch_unwind(|| {
            if let Ok(spec) = model_spec(&path) {
                let _ = load_params(&spec, &path);
            }
        });
        if r.is_err() {
            let keep = std::env::temp_dir().join("nngeo_onnx_panic.onnx");
            std::fs::write(&keep, &b).unwrap();
            panic!("panicked on a file saved to {}", keep.display());
        }
    }
}

/// Graphs changed structurally (a node's input dropped, an initializer
/// removed or reshaped, an attribute set to another small value) give an
/// error or a model, never a panic: 3000 variants of the fixtures.
#[test]
fn malformed_graphs_never_panic() {
    use nngeo::onnx::proto::ModelProto;
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m.max(1) as u64) as usize
    };
    let models: Vec<ModelProto> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .map(|p| ModelProto::decode(std::fs::read(p).unwrap().as_slice()).unwrap())
        .collect();
    let path = tmp.path().join("m.onnx");
    for round in 0..3000 {
        let mut m = models[round % models.len()].clone();
        let g = m.graph.as_mut().unwrap();
        for _ in 0..1 + next(3) {
            match next(5) {
                0 if !g.node.is_empty() => {
                    let k = next(g.node.len());
                    let n = &mut g.node[k];
                    if !n.input.is_empty() {
                        let i = next(n.input.len());
                        n.input.remove(i);
                    }
                }
                1 if !g.initializer.is_empty() => {
                    let k = next(g.initializer.len());
                    g.initializer.remove(k);
                }
                2 if !g.initializer.is_empty() => {
                    let k = next(g.initializer.len());
                    let t = &mut g.initializer[k];
                    if !t.dims.is_empty() {
                        let i = next(t.dims.len());
                        t.dims[i] = next(4) as i64;
                    }
                }
                3 if !g.node.is_empty() => {
                    let k = next(g.node.len());
                    let n = &mut g.node[k];
                    if !n.attribute.is_empty() {
                        let i = next(n.attribute.len());
                        let a = &mut n.attribute[i];
                        a.i = next(5) as i64 - 2;
                        for v in a.ints.iter_mut() {
                            *v = next(5) as i64 - 2;
                        }
                        if next(2) == 0 {
                            a.ints.pop();
                        }
                    }
                }
                _ if !g.node.is_empty() => {
                    let k = next(g.node.len());
                    g.node.remove(k);
                }
                _ => {}
            }
        }
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let r = std::panic::catch_unwind(|| {
            if let Ok(spec) = model_spec(&path) {
                let _ = load_params(&spec, &path);
            }
        });
        if r.is_err() {
            let keep = std::env::temp_dir().join("nngeo_onnx_panic.onnx");
            std::fs::write(&keep, m.encode_to_vec()).unwrap();
            panic!(
                "round {round}: panicked on a file saved to {}",
                keep.display()
            );
        }
    }
}
