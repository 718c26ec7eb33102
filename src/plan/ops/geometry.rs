//! Representations (`Fim`, `Ntk`, their structures and options), the
//! vectors built from them and the measurements taken of them.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Fim,
    Ntk,
    /// The Hessian of the mean loss (or one of its parts).
    Hessian,
}

impl Object {
    /// Whether its matrices act on parameter-space vectors (a Fisher or a
    /// Hessian), not on the examples' outputs (an NTK).
    pub fn param_space(self) -> bool {
        !matches!(self, Object::Ntk)
    }
}

/// Which part of the loss Hessian `Jᵀ H_ℓ J + Σ_c (∂ℓ/∂f_c) ∇²f_c`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HessianPart {
    #[default]
    Full,
    /// `Jᵀ H_ℓ J`: the true Fisher for the cross-entropy.
    GaussNewton,
    /// The network's own curvature weighted by the loss gradient.
    Residual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerFamily {
    Linear,
    Conv,
    Norm,
    Embedding,
}

impl LayerFamily {
    /// Its key in `mix(...)`.
    pub fn key(self) -> &'static str {
        match self {
            LayerFamily::Linear => "linear",
            LayerFamily::Conv => "conv",
            LayerFamily::Norm => "norm",
            LayerFamily::Embedding => "embedding",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Structure {
    Dense,
    BlockDiag,
    Diag,
    #[serde(rename = "KFAC")]
    Kfac,
    /// `refit`: the diagonal is refitted on data (true EKFAC); without it the
    /// eigenvalues are products of KFAC's and EKFAC equals KFAC.
    /// `initial_basis`: the eigenbases come from the model at its
    /// initialisation (a stale basis), the diagonal is refitted now.
    #[serde(rename = "EKFAC")]
    Ekfac {
        refit: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        initial_basis: bool,
    },
    /// `rank`: keep the top-k directions; `None` keeps the full factor.
    LowRank {
        rank: Option<usize>,
    },
    QuasiDiag,
    Implicit,
    /// A structure per layer family, with per-layer exceptions.
    Mix {
        families: BTreeMap<LayerFamily, Structure>,
        /// Exact layer names (patterns are expanded by the checker) whose
        /// structure overrides their family's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        layers: BTreeMap<String, Structure>,
    },
}

impl Structure {
    /// The structure that layer `name` of `family` gets: a mix's choice for
    /// it (its own entry, else its family's), or `self` for a whole-model
    /// structure. `None` where a mix says nothing about the layer.
    pub fn for_layer(&self, name: &str, family: Option<LayerFamily>) -> Option<&Structure> {
        match self {
            Structure::Mix { families, layers } => layers
                .get(name)
                .or_else(|| family.and_then(|f| families.get(&f))),
            s => Some(s),
        }
    }

    /// Whether EKFAC gives some layer its block (itself, or a part of a
    /// mix): what a natural gradient's `refit` refits.
    pub fn has_ekfac(&self) -> bool {
        match self {
            Structure::Ekfac { .. } => true,
            Structure::Mix { families, layers } => families
                .values()
                .chain(layers.values())
                .any(|p| matches!(p, Structure::Ekfac { .. })),
            _ => false,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Structure::Dense => "Dense".into(),
            Structure::BlockDiag => "BlockDiag".into(),
            Structure::Diag => "Diag".into(),
            Structure::Kfac => "KFAC".into(),
            Structure::Ekfac { .. } => "EKFAC".into(),
            Structure::LowRank { .. } => "LowRank".into(),
            Structure::QuasiDiag => "QuasiDiag".into(),
            Structure::Implicit => "Implicit".into(),
            Structure::Mix { .. } => "mix".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FisherVariant {
    /// Exact expectation under the model's output distribution.
    True,
    /// Monte-Carlo estimate with `samples` draws per example.
    Mc { samples: usize, seed: u64 },
    /// Uses the dataset's labels.
    Empirical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    Classification,
    /// Binary classification with one logit (Bernoulli output).
    Binary,
    /// Gaussian output with variance `sigma2`.
    Regression {
        sigma2: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReprOptions {
    /// Fisher only.
    pub fisher: Option<FisherVariant>,
    pub task: Task,
    /// Layers included; all parameterised layers when empty.
    pub layers: Vec<String>,
    /// Centre per-example Jacobians over examples (NTK) / gradients (FIM).
    pub centered: bool,
    /// Number of examples the representation is computed on.
    pub examples: usize,
    /// Number of model outputs.
    pub outputs: usize,
    /// `sharded(k)`: computed over `k` contiguous example ranges whose
    /// partial sums are reduced exactly (see [`crate::plan::parts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Set only by a part task (`nngeo exec --part`): compute this part of
    /// one stage, write it to the run folder, and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<crate::plan::parts::PartRequest>,
    /// Read from a file written by `save F to "...safetensors"` instead
    /// of computed (`fim("f.safetensors", model = net)`; the step's `data`
    /// is then the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Hessian only: which part. Its loss is the task's (cross-entropy
    /// for classes, PyTorch's MSE for regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hessian: Option<HessianPart>,
}

/// A representation, whole or one layer's block of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operand {
    pub repr: StepId,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub layer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VectorOp {
    /// The eigenvector of a Fisher with the `rank`-th largest eigenvalue
    /// (1 = the top one), unit norm, its largest entry positive.
    Eigenvector {
        m: Operand,
        rank: usize,
    },
    /// Gradient of the mean training loss.
    Grad {
        model: StepId,
        data: StepId,
        /// `grad(net, data sharded(k))`: summed over `k` contiguous
        /// example ranges, reduced exactly (see [`crate::plan::parts`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shards: Option<usize>,
        /// Set only by a part task (`nngeo exec --part`): compute this
        /// part, write it to the run folder, and nothing else.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<crate::plan::parts::PartRequest>,
    },
    /// Standard normal entries.
    Random {
        model: StepId,
        seed: u64,
    },
    /// Current weights.
    Weights {
        model: StepId,
    },
    /// Weights at initialisation (before any training).
    InitialWeights {
        model: StepId,
    },
    Add {
        a: StepId,
        b: StepId,
    },
    Sub {
        a: StepId,
        b: StepId,
    },
    Scale {
        factor: f64,
        v: StepId,
    },
    /// A vector-valued measurement (`mv`, `solve`, `diag` of a Fisher)
    /// kept as a vector: laid out on the representation's layers.
    Measured {
        measurement: Measurement,
    },
    /// One layer's part of `v` (`v[layer]`).
    Part {
        v: StepId,
        layer: String,
    },
    /// `J v`: the outputs' directional derivative on every example, a
    /// function-space vector `[n, C]` (NNGeometry's `FVector`); `v` may
    /// cover some layers only (the others count as zero).
    Jvp {
        model: StepId,
        data: StepId,
        v: StepId,
    },
    /// `Jᵀ u` for a function-space vector `u [n, C]`: a vector over every
    /// parameter of the model.
    Vjp {
        model: StepId,
        data: StepId,
        u: StepId,
    },
    /// Elementwise `a * b`.
    Mul {
        a: StepId,
        b: StepId,
    },
    /// Elementwise `a / b`.
    Div {
        a: StepId,
        b: StepId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measurement {
    Trace {
        m: Operand,
    },
    Frobenius {
        m: Operand,
    },
    SpectralNorm {
        m: Operand,
    },
    Diagonal {
        m: Operand,
    },
    Mv {
        m: Operand,
        v: StepId,
    },
    #[serde(rename = "vTMv")]
    VTMv {
        m: Operand,
        v: StepId,
    },
    Solve {
        m: Operand,
        v: StepId,
        damping: f64,
    },
    Eigenvalues {
        m: Operand,
        top: usize,
    },
    /// The eigenvectors of the `top` largest eigenvalues of a Fisher, as
    /// the rows of a `[top, P]` tensor (those of `eigenvector(M, k)`).
    Eigenvectors {
        m: Operand,
        top: usize,
    },
    EffectiveRank {
        m: Operand,
    },
    /// Kernel–target alignment with the targets of `targets` (one-hot for
    /// classes); `centered` centres over examples.
    Alignment {
        m: Operand,
        targets: StepId,
        centered: bool,
        /// Align the `[n, n]` trace kernel `Σ_c K_cc` with `Y Yᵀ` instead
        /// of the full `[C·n, C·n]` kernel with `y yᵀ`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trace: bool,
    },
    /// ‖a − b‖_F / ‖b‖_F
    RelError {
        a: Operand,
        b: Operand,
    },
    /// Bytes the representation holds.
    Memory {
        m: Operand,
    },
    Loss {
        model: StepId,
        data: StepId,
    },
    Accuracy {
        model: StepId,
        data: StepId,
    },
    Norm {
        v: StepId,
    },
    Dot {
        a: StepId,
        b: StepId,
    },
    /// The influence of each example of `data` on the mean loss of
    /// `model` on `test`: `−∇L_testᵀ (M + λ)⁻¹ ∇ℓᵢ` (Koh and Liang's
    /// `I_up,loss`, preconditioned by `M`), for every example, one
    /// (`example`), or their mean (`mean`).
    Influence {
        m: Operand,
        model: StepId,
        data: StepId,
        test: StepId,
        damping: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        example: Option<usize>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mean: bool,
    },
    /// A vector's entries, streamed as they are (`measure u`).
    Vector {
        v: StepId,
    },
}
