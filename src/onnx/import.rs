//! An ONNX graph as nngeo's graph of layers: the walk over the nodes, the
//! values it tracks, and how layers are added and their parameters
//! recorded. The operators themselves are in [`super::ops`].
//!
//! Nodes are visited in file order (ONNX requires a topological order).
//! Each value is a graph node of the model, a parameter (an initializer,
//! perhaps a transposed or unsqueezed view of one), a constant, a shape
//! being computed (`x.view(x.size(0), -1)` exports `Shape`, `Gather`,
//! `Concat`), or a partly matched pattern (GELU's erf form, an exported
//! GroupNorm, a `MatMul` that an `Add` of a bias may complete). Nothing
//! depends on node names or on the order of independent nodes: names only
//! name the layers.

use super::error::{At, OnnxError};
use super::read::{read_file, Attrs, OnnxFile, Tensor};
use crate::plan::{Layer, LayerSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A model read from an ONNX file.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// Per-example input shape (the batch dimension removed).
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    /// Parameterised layers in `state_dict` order, when that differs from
    /// the execution order (see `ModelSpec::param_order`).
    pub param_order: Vec<usize>,
    /// Where each `state_dict` tensor of the layers comes from.
    pub sources: BTreeMap<String, Source>,
    /// Things that are imported but worth knowing.
    pub warnings: Vec<String>,
    pub opset: i64,
}

/// The initializer a `state_dict` tensor is read from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The parameter's name in the graph (its `state_dict` key).
    pub init: String,
    /// The initializer holding its values: `init` itself, or the one an
    /// `Identity` node copies (PyTorch's exporter keeps one initializer
    /// of equal-valued parameters, e.g. the ones and zeros of fresh
    /// BatchNorms, and gives the others as `Identity` outputs).
    pub data: String,
    /// A 2-D initializer stored `[in, out]` (a `MatMul`'s right operand):
    /// transposed to PyTorch's `[out, in]`.
    pub transpose: bool,
}

/// A symbolic integer of a shape computation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dim {
    Batch,
    Known(i64),
}

/// A value of the graph, as far as the importer is concerned.
#[derive(Clone, Debug)]
pub enum Val {
    /// A node of the model (0 = input, k = output of layer k − 1).
    Node(usize),
    /// An initializer seen through a view: `dims` are the view's;
    /// `transposed` when the view is the initializer's 2-D transpose.
    Param {
        init: String,
        dims: Vec<usize>,
        transposed: bool,
    },
    Const(Tensor),
    /// Integers computed from shapes (`scalar`: rank 0).
    Ints {
        vals: Vec<Dim>,
        scalar: bool,
    },
    Pending(Pending),
}

/// A pattern matched so far; `x` is the node it started from.
#[derive(Clone, Debug)]
pub enum Pending {
    /// `MatMul(x, W)`: a linear layer, with a bias if an `Add` follows.
    Linear {
        x: usize,
        init: String,
        transpose: bool,
        at: At,
    },
    /// GELU (erf form) `0.5·x·(1 + erf(x/√2))`, step by step.
    GeluDiv(usize),
    GeluErf(usize),
    GeluOnePlus(usize),
    GeluProd(usize),
    Half(usize),
    /// GroupNorm: `Reshape(x, [0, G, -1])`, `InstanceNormalization` with
    /// unit scale, `Reshape` back, `Mul` by the weight, `Add` the bias.
    GnSplit {
        x: usize,
        groups: usize,
    },
    GnNorm {
        x: usize,
        groups: usize,
        eps: f64,
    },
    GnBack {
        x: usize,
        groups: usize,
        eps: f64,
    },
    GnScaled {
        x: usize,
        groups: usize,
        eps: f64,
        weight: String,
    },
}

impl Pending {
    pub fn describe(&self) -> &'static str {
        match self {
            Pending::Linear { .. } => "a MatMul",
            Pending::GeluDiv(_)
            | Pending::GeluErf(_)
            | Pending::GeluOnePlus(_)
            | Pending::GeluProd(_)
            | Pending::Half(_) => "part of GELU's erf form 0.5·x·(1 + erf(x/√2))",
            Pending::GnSplit { .. } => {
                "a Reshape that is not a flatten (only supported to start an exported GroupNorm)"
            }
            Pending::GnNorm { .. } | Pending::GnBack { .. } | Pending::GnScaled { .. } => {
                "part of an exported GroupNorm (Reshape, InstanceNormalization, Reshape, Mul by the weight, Add the bias)"
            }
        }
    }
}

/// The walk's state.
pub struct Importer<'f> {
    pub file: &'f OnnxFile,
    pub vals: HashMap<String, Val>,
    pub input: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    pub sources: BTreeMap<String, Source>,
    pub warnings: Vec<String>,
    /// Parameterised layer names already used.
    names: BTreeMap<String, At>,
    /// Parameters given as `Identity` copies of an initializer: their
    /// names and the initializer's.
    alias: HashMap<String, String>,
    /// Layers named from their node, not their weight (see `layer_name`).
    renamed: Vec<String>,
}

/// Reads `path` and maps its graph onto nngeo's layers.
pub fn import(path: &Path) -> Result<Imported, OnnxError> {
    let file = read_file(path)?;
    import_file(&file)
}

pub fn import_file(file: &OnnxFile) -> Result<Imported, OnnxError> {
    let mut imp = Importer::new(file)?;
    for node in &file.nodes {
        imp.node(node)?;
    }
    imp.finish()
}

impl<'f> Importer<'f> {
    fn new(file: &'f OnnxFile) -> Result<Self, OnnxError> {
        let dims = &file.input.dims;
        let graph = |what: String| OnnxError::Graph { what };
        if dims.len() < 2 {
            return Err(graph(format!(
                "input `{}` has {} dimension(s); nngeo needs a batch dimension and at least one more",
                file.input.name,
                dims.len()
            )));
        }
        let input: Vec<usize> = dims[1..]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.ok_or_else(|| {
                    graph(format!(
                        "dimension {} of input `{}` is symbolic; only the batch dimension (the first) may be",
                        i + 1,
                        file.input.name
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if input
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_none_or(|n| n > 1 << 40)
        {
            return Err(graph(format!(
                "input `{}` of shape {input:?} per example is too large",
                file.input.name
            )));
        }
        use super::proto::dtype;
        if ![0, dtype::FLOAT, dtype::DOUBLE, dtype::INT64, dtype::INT32]
            .contains(&file.input.elem_type)
        {
            return Err(graph(format!(
                "input `{}` has element type {}; nngeo reads float32, float64 or integer (token id) inputs",
                file.input.name, file.input.elem_type
            )));
        }
        let mut warnings = Vec::new();
        if let Some(b) = dims[0] {
            warnings.push(format!(
                "input `{}` has a fixed batch size of {b}; nngeo treats the first dimension as the batch (export with `dynamic_axes={{\"{}\": {{0: \"n\"}}}}`)",
                file.input.name, file.input.name
            ));
        }
        let mut vals = HashMap::new();
        vals.insert(file.input.name.clone(), Val::Node(0));
        Ok(Importer {
            file,
            vals,
            input,
            layers: Vec::new(),
            sources: BTreeMap::new(),
            warnings,
            names: BTreeMap::new(),
            alias: HashMap::new(),
            renamed: Vec::new(),
        })
    }

    /// The initializer holding parameter `name`'s values.
    pub fn init_tensor(&self, name: &str) -> &Tensor {
        &self.file.inits[self.alias.get(name).map_or(name, |s| s.as_str())]
    }

    /// Where parameter `name` is read from, as stored.
    pub fn source(&self, name: &str) -> Source {
        Source {
            init: name.into(),
            data: self.alias.get(name).cloned().unwrap_or_else(|| name.into()),
            transpose: false,
        }
    }

    /// `Identity` of a parameter: the same values under the output's name.
    pub fn alias_param(&mut self, out: &str, of: &str) {
        let data = self.alias.get(of).cloned().unwrap_or_else(|| of.into());
        self.alias.insert(out.into(), data);
    }

    /// The per-example shape of node `n`.
    pub fn shape(&self, n: usize) -> &[usize] {
        if n == 0 {
            &self.input
        } else {
            &self.layers[n - 1].output
        }
    }

    /// The value called `name` (`None` for an omitted optional input).
    pub fn val(&self, name: &str, at: &At) -> Result<Option<Val>, OnnxError> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Some(v) = self.vals.get(name) {
            return Ok(Some(v.clone()));
        }
        match self.file.inits.get(name) {
            Some(t) if t.is_float() => Ok(Some(Val::Param {
                init: name.to_string(),
                dims: t.dims.clone(),
                transposed: false,
            })),
            Some(t) => Ok(Some(Val::Const(t.clone()))),
            None => Err(OnnxError::Graph {
                what: format!("{at} reads `{name}`, which no earlier node computes"),
            }),
        }
    }

    /// Input `i` of a node, required.
    pub fn input(&self, node: &[String], i: usize, at: &At) -> Result<Val, OnnxError> {
        let name = node.get(i).map_or("", |s| s.as_str());
        self.val(name, at)?.ok_or_else(|| OnnxError::Unsupported {
            at: at.clone(),
            what: format!("input {} is missing", i + 1),
        })
    }

    /// A value that must be a tensor of the model: a pending `MatMul`
    /// becomes a bias-free linear layer here.
    pub fn tensor(&mut self, v: Val, at: &At) -> Result<usize, OnnxError> {
        match v {
            Val::Node(n) => Ok(n),
            Val::Pending(Pending::Linear {
                x,
                init,
                transpose,
                at: mm,
            }) => self.linear(x, &init, transpose, None, &mm),
            Val::Pending(p) => Err(OnnxError::Unsupported {
                at: at.clone(),
                what: format!("reads {}, which is not followed as that pattern goes", p.describe()),
            }),
            Val::Param { init, .. } => Err(OnnxError::LooseParameter {
                at: at.clone(),
                param: init,
            }),
            Val::Const(_) | Val::Ints { .. } => Err(OnnxError::Unsupported {
                at: at.clone(),
                what: "a constant where nngeo needs the network's activations: arithmetic with constants is only supported inside GELU's erf form".into(),
            }),
        }
    }

    /// Integers of a constant or a shape computation.
    pub fn ints(&self, v: &Val) -> Option<(Vec<Dim>, bool)> {
        match v {
            Val::Ints { vals, scalar } => Some((vals.clone(), *scalar)),
            Val::Const(t) => t.ints().map(|i| {
                (
                    i.iter().map(|&k| Dim::Known(k)).collect(),
                    t.dims.is_empty(),
                )
            }),
            _ => None,
        }
    }

    /// The values of a constant (or of an initializer used as one).
    pub fn floats(&self, v: &Val) -> Option<Vec<f64>> {
        match v {
            Val::Const(t) => Some(t.floats()),
            Val::Param { init, .. } => Some(self.init_tensor(init).floats()),
            _ => None,
        }
    }

    /// The name of a parameterised layer: its weight's initializer without
    /// `.weight` (PyTorch names initializers by `state_dict` key); else the
    /// module path in the node's name, with a warning.
    pub fn layer_name(&mut self, init: &str, at: &At) -> Result<String, OnnxError> {
        let name = match init.strip_suffix(".weight") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                let scope = scope_path(&at.node);
                let name = if scope.is_empty() {
                    format!("{}{}", at.op.to_lowercase(), self.layers.len())
                } else {
                    scope
                };
                self.renamed.push(format!("`{init}` ({at}) as `{name}`"));
                name
            }
        };
        if let Some(first) = self.names.get(&name) {
            return Err(OnnxError::Unsupported {
                at: at.clone(),
                what: format!(
                    "layer `{name}` is also computed by {first} (weight sharing is not supported)"
                ),
            });
        }
        self.names.insert(name.clone(), at.clone());
        Ok(name)
    }

    /// Appends a layer reading `from`; its node.
    pub fn push(
        &mut self,
        at: &At,
        name: &str,
        layer: Layer,
        from: &[usize],
    ) -> Result<usize, OnnxError> {
        let shapes: Vec<&[usize]> = from.iter().map(|&n| self.shape(n)).collect();
        if matches!(layer, Layer::Embedding { .. }) && from != [0] {
            return Err(OnnxError::Unsupported {
                at: at.clone(),
                what: "an embedding must read the model's input (its token ids)".into(),
            });
        }
        let reads = if from == [self.layers.len()] {
            vec![]
        } else {
            from.to_vec()
        };
        let spec = LayerSpec::node(name, layer, &shapes, reads).map_err(|e| OnnxError::Shape {
            at: at.clone(),
            what: e,
        })?;
        self.layers.push(spec);
        Ok(self.layers.len())
    }

    /// Appends a parameterised layer whose `state_dict` tensors
    /// (`weight`, `bias`, ...) come from `tensors`, checking their shapes.
    pub fn push_params(
        &mut self,
        at: &At,
        name: &str,
        layer: Layer,
        from: &[usize],
        tensors: &[(&str, Source)],
    ) -> Result<usize, OnnxError> {
        let expected = layer.state_tensors(name);
        let node = self.push(at, name, layer, from)?;
        for (suffix, src) in tensors {
            let key = format!("{name}.{suffix}");
            let Some((_, shape, _)) = expected.iter().find(|(k, _, _)| *k == key) else {
                return Err(OnnxError::Unsupported {
                    at: at.clone(),
                    what: format!("`{}` has no place in this layer", src.init),
                });
            };
            let t = self.init_tensor(&src.init);
            let mut dims = t.dims.clone();
            if src.transpose {
                dims.reverse();
            }
            // A bias or norm parameter may carry unit dimensions.
            let squeezed: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
            let want: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
            if dims != *shape && (squeezed != want || t.numel() != shape.iter().product::<usize>())
            {
                return Err(OnnxError::Shape {
                    at: at.clone(),
                    what: format!(
                        "parameter `{}` has shape {:?}; layer `{name}` needs {shape:?} for `{key}`",
                        src.init, t.dims
                    ),
                });
            }
            self.sources.insert(key, src.clone());
        }
        for (key, _, trainable) in &expected {
            if *trainable && !self.sources.contains_key(key) {
                return Err(OnnxError::Unsupported {
                    at: at.clone(),
                    what: format!("no initializer gives `{key}`"),
                });
            }
        }
        Ok(node)
    }

    /// A linear layer `x Wᵀ (+ b)` from initializer `init` (`transpose`:
    /// stored `[in, out]`).
    pub fn linear(
        &mut self,
        x: usize,
        init: &str,
        transpose: bool,
        bias: Option<&str>,
        at: &At,
    ) -> Result<usize, OnnxError> {
        let dims = &self.init_tensor(init).dims;
        if dims.len() != 2 {
            return Err(OnnxError::Unsupported {
                at: at.clone(),
                what: format!("the weight `{init}` of a linear layer must be 2-D, found {dims:?}"),
            });
        }
        let (out_features, in_features) = if transpose {
            (dims[1], dims[0])
        } else {
            (dims[0], dims[1])
        };
        let layer = Layer::Linear {
            in_features,
            out_features,
            bias: bias.is_some(),
        };
        let mut tensors = vec![(
            "weight",
            Source {
                transpose,
                ..self.source(init)
            },
        )];
        if let Some(b) = bias {
            tensors.push(("bias", self.source(b)));
        }
        match self.param_layer(at, init, layer, x, &tensors)? {
            Val::Node(n) => Ok(n),
            _ => unreachable!("param_layer gives a node"),
        }
    }

    /// A parameterised layer reading node `x`, named after its weight
    /// initializer `weight` (see [`Self::layer_name`]).
    pub fn param_layer(
        &mut self,
        at: &At,
        weight: &str,
        layer: Layer,
        x: usize,
        tensors: &[(&str, Source)],
    ) -> Result<Val, OnnxError> {
        let name = self.layer_name(weight, at)?;
        Ok(Val::Node(self.push_params(
            at,
            &name,
            layer,
            &[x],
            tensors,
        )?))
    }

    /// The name of a parameter-free layer: the module path of its node.
    pub fn free_name(&self, at: &At, suffix: Option<&str>) -> String {
        let scope = scope_path(&at.node);
        let op = suffix.map_or_else(|| at.op.to_lowercase(), |s| s.to_string());
        match (scope.is_empty(), suffix.is_some()) {
            (true, _) => op,
            (false, true) => format!("{scope}.{op}"),
            (false, false) => scope,
        }
    }

    fn finish(mut self) -> Result<Imported, OnnxError> {
        let file = self.file;
        let [out] = file.outputs.as_slice() else {
            return Err(OnnxError::Graph {
                what: format!(
                    "the graph has {} outputs; nngeo models have one",
                    file.outputs.len()
                ),
            });
        };
        let at = At {
            node: out.clone(),
            op: "graph output".into(),
            opset: file.opset,
        };
        let v = self.val(out, &at)?.ok_or_else(|| OnnxError::Graph {
            what: "the graph output has no name".into(),
        })?;
        let n = self.tensor(v, &at)?;
        if n == 0 || n != self.layers.len() {
            return Err(OnnxError::Graph {
                what: format!(
                    "the output `{out}` is not computed by the last layer: nodes after it compute something the output does not use"
                ),
            });
        }
        if !self.layers.iter().any(|l| l.params > 0) {
            return Err(OnnxError::Graph {
                what: "the graph has no parameterised layer (Conv, Gemm, BatchNormalization...): was it exported with `export_params=True`?".into(),
            });
        }
        // State-dict order: by the first initializer of each layer.
        let rank: HashMap<&str, usize> = file
            .init_order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let exec: Vec<usize> = (0..self.layers.len())
            .filter(|&i| self.layers[i].params > 0)
            .collect();
        let first = |i: usize| {
            let prefix = format!("{}.", self.layers[i].name);
            self.sources
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(_, s)| rank.get(s.init.as_str()).copied())
                .min()
        };
        // Layers all of whose tensors were deduplicated into other
        // initializers have no rank of their own (see `order`).
        let ranks: Vec<Option<usize>> = exec.iter().map(|&i| first(i)).collect();
        let inferred: Vec<String> = exec
            .iter()
            .zip(&ranks)
            .filter(|(_, r)| r.is_none())
            .map(|(&i, _)| format!("`{}`", self.layers[i].name))
            .collect();
        if !inferred.is_empty() {
            self.warnings.push(format!(
                "the parameters of {} are copies (Identity nodes) of equal-valued initializers, which the exporter deduplicated; their place in the parameter order is inferred from the module tree and the execution order",
                inferred.join(", ")
            ));
        }
        let names: Vec<&str> = exec.iter().map(|&i| self.layers[i].name.as_str()).collect();
        let order: Vec<usize> = super::order::state_dict_order(&names, &ranks)
            .into_iter()
            .map(|k| exec[k])
            .collect();
        if !self.renamed.is_empty() {
            let shown: Vec<&str> = self.renamed.iter().take(3).map(|s| s.as_str()).collect();
            let more = self.renamed.len().saturating_sub(3);
            self.warnings.push(format!(
                "{} weight(s) are not named by a `state_dict` key, so their layers are named after their nodes: {}{}; an export with constant folding renames (and may merge) parameters, e.g. a BatchNorm folded into the convolution before it: export with `do_constant_folding=False` to keep the model's own parameters",
                self.renamed.len(),
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ));
        }
        let output = self.layers[n - 1].output.clone();
        Ok(Imported {
            input: self.input,
            output,
            param_order: if order == exec { vec![] } else { order },
            layers: self.layers,
            sources: self.sources,
            warnings: self.warnings,
            opset: file.opset,
        })
    }

    /// Converts one node, recording the values of its outputs.
    fn node(&mut self, node: &'f super::proto::NodeProto) -> Result<(), OnnxError> {
        let a = Attrs::new(node, self.file.opset);
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(OnnxError::UnsupportedOp { at: a.at });
        }
        let out = self.op(node, &a)?;
        if let Some(name) = node.output.first() {
            self.vals.insert(name.clone(), out);
        }
        Ok(())
    }
}

/// The module path in a node name as PyTorch's exporter writes it:
/// `/layer1/layer1.0/conv1/Conv` is `layer1.0.conv1`, and
/// `/layer2/layer2.0/downsample/downsample.0/Conv` is
/// `layer2.0.downsample.0` (a segment `a.b` under `a` replaces it).
pub fn scope_path(node: &str) -> String {
    let segs: Vec<&str> = node.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() < 2 {
        return String::new();
    }
    let mut path: Vec<&str> = Vec::new();
    for s in &segs[..segs.len() - 1] {
        match path.last() {
            Some(last) if s.starts_with(&format!("{last}.")) => {
                *path.last_mut().unwrap() = s;
            }
            _ => path.push(s),
        }
    }
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::scope_path;

    #[test]
    fn module_paths_come_from_pytorch_scope_names() {
        assert_eq!(scope_path("/layer1/layer1.0/conv1/Conv"), "layer1.0.conv1");
        assert_eq!(
            scope_path("/layer2/layer2.0/downsample/downsample.0/Conv"),
            "layer2.0.downsample.0"
        );
        assert_eq!(scope_path("/fc/Gemm"), "fc");
        assert_eq!(scope_path("/Flatten"), "");
        assert_eq!(scope_path("Conv_3"), "");
    }
}
