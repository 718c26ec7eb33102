//! Fisher representations as safetensors files (`save F to "f.safetensors"`,
//! `fim("f.safetensors", model = net)`), float64, with the structure and
//! the layers in the metadata. The layout is documented in the README
//! ("Saving a representation"); a file read back is the same matrix bit
//! for bit.

use super::repr::{Block, Fim, FimBody, LayerInfo};
use crate::linalg::{Mat, Stored};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// The `format` metadata value of a representation file.
pub const FORMAT: &str = "nngeo.fim/1";

/// One layer as the metadata lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// PyTorch module path.
    pub name: String,
    /// Parameters of the layer (its rows in the matrix).
    pub numel: usize,
    /// Natural layout `[sg, sa]`: output units × inputs (+1 for the bias).
    pub sg: usize,
    pub sa: usize,
    pub bias: bool,
    /// Transposed convolutions: `(groups, K)` (see `stats::Order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<(usize, usize)>,
    /// How its block is stored: `dense`, `diag`, `kfac`, `ekfac`,
    /// `quasidiag`; empty for a whole Dense or LowRank body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub block: String,
}

/// What a file's metadata says.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The structure's name (`KFAC`, `Dense`, ...).
    pub structure: String,
    /// `dense`, `blocks` or `lowrank`.
    pub body: String,
    pub n: usize,
    pub refit: bool,
    pub layers: Vec<LayerMeta>,
}

fn block_kind(b: &Block) -> &'static str {
    match b {
        Block::Dense(_) => "dense",
        Block::Diag(_) => "diag",
        Block::Kfac { .. } => "kfac",
        Block::Ekfac { .. } => "ekfac",
        Block::QuasiDiag { .. } => "quasidiag",
    }
}

/// The tensors of a body, keyed as in the file.
fn tensors(f: &Fim) -> Result<Vec<Named<'_>>, String> {
    fn mat(k: String, m: &Mat) -> Named<'_> {
        (k, vec![m.rows, m.cols], Cow::Borrowed(m.data.as_slice()))
    }
    /// Downloaded where it is held on a device.
    fn stored(k: String, m: &Stored) -> Result<Named<'_>, String> {
        let values = m.values_f64().map_err(|e| e.to_string())?;
        Ok((k, vec![m.rows(), m.cols()], values))
    }
    Ok(match &f.body {
        FimBody::Dense(m) => vec![stored("dense".into(), m)?],
        FimBody::LowRank(m) => vec![mat("lowrank".into(), m)],
        FimBody::Blocks(blocks) => blocks
            .iter()
            .zip(&f.layers)
            .map(|(b, l)| {
                let k = |s: &str| format!("{}.{s}", l.name);
                Ok(match b {
                    Block::Dense(m) => vec![stored(k("dense"), m)?],
                    Block::Diag(d) => vec![(k("diag"), vec![d.len()], Cow::Borrowed(d.as_slice()))],
                    Block::Kfac { a, g } => vec![stored(k("A"), a)?, stored(k("G"), g)?],
                    Block::Ekfac { ua, ug, d } => {
                        vec![stored(k("UA"), ua)?, stored(k("UG"), ug)?, mat(k("D"), d)]
                    }
                    Block::QuasiDiag { diag, cross } => vec![
                        (k("diag"), vec![diag.len()], Cow::Borrowed(diag.as_slice())),
                        mat(k("cross"), cross),
                    ],
                })
            })
            .collect::<Result<Vec<_>, String>>()?
            .into_iter()
            .flatten()
            .collect(),
    })
}

/// The file of `f` (float64) with its structure name and layers.
pub fn to_bytes(f: &Fim, structure: &str) -> Result<Vec<u8>, String> {
    let blocks: Vec<&str> = match &f.body {
        FimBody::Blocks(b) => b.iter().map(block_kind).collect(),
        _ => vec![""; f.layers.len()],
    };
    let layers: Vec<LayerMeta> = f
        .layers
        .iter()
        .zip(blocks)
        .map(|(l, b)| LayerMeta {
            name: l.name.clone(),
            numel: l.numel,
            sg: l.sg,
            sa: l.sa,
            bias: l.bias,
            order: l.order,
            block: b.into(),
        })
        .collect();
    let body = match &f.body {
        FimBody::Dense(_) => "dense",
        FimBody::Blocks(_) => "blocks",
        FimBody::LowRank(_) => "lowrank",
    };
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("structure", structure.to_string()),
        ("body", body.to_string()),
        ("n", f.n.to_string()),
        ("refit", f.refit.to_string()),
        (
            "layers",
            serde_json::to_string(&layers).map_err(|e| e.to_string())?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    f64_safetensors(&tensors(f)?, meta)
}

/// A safetensors file of float64 tensors `(key, shape, values)` with
/// `meta`, serialised.
/// A tensor to write: its key, shape and f64 values.
pub type Named<'d> = (String, Vec<usize>, Cow<'d, [f64]>);

pub fn f64_safetensors(ts: &[Named<'_>], meta: HashMap<String, String>) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = ts
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = ts
        .iter()
        .zip(&bytes)
        .map(|((k, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::serialize(views, &Some(meta)).map_err(|e| e.to_string())
}

fn header_of(meta: Option<&HashMap<String, String>>, path: &Path) -> Result<Header, String> {
    let shown = path.display();
    let meta =
        meta.ok_or_else(|| format!("`{shown}` has no metadata: not a saved representation"))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| format!("`{shown}`: no `{k}` in the metadata of a saved representation"))
    };
    if get("format")? != FORMAT {
        return Err(format!(
            "`{shown}`: format `{}`, expected `{FORMAT}`",
            get("format")?
        ));
    }
    Ok(Header {
        structure: get("structure")?.clone(),
        body: get("body")?.clone(),
        n: get("n")?
            .parse()
            .map_err(|e| format!("`{shown}`: n: {e}"))?,
        refit: get("refit")? == "true",
        layers: serde_json::from_str(get("layers")?)
            .map_err(|e| format!("`{shown}`: layers: {e}"))?,
    })
}

/// The metadata of a representation file (read at check time).
pub fn read_header(path: &Path) -> Result<Header, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("`{}` is not a safetensors file: {e}", path.display()))?;
    header_of(meta.metadata().as_ref(), path)
}

/// Reads a representation written by [`save`].
pub fn load(path: &Path) -> Result<(Header, Fim), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("`{}` is not a safetensors file: {e}", path.display()))?;
    let h = header_of(meta.metadata().as_ref(), path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mat = |k: &str, rows: usize, cols: usize| -> Result<Mat, String> {
        let v = st
            .tensor(k)
            .map_err(|_| format!("`{}` has no tensor `{k}`", path.display()))?;
        if v.dtype() != safetensors::Dtype::F64
            || v.shape().iter().product::<usize>() != rows * cols
        {
            return Err(format!(
                "`{}`: tensor `{k}` is {:?} {:?}, expected F64 [{rows}, {cols}]",
                path.display(),
                v.dtype(),
                v.shape()
            ));
        }
        let data = v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Mat::from_vec(rows, cols, data))
    };
    let mut offset = 0;
    let layers: Vec<LayerInfo> = h
        .layers
        .iter()
        .map(|l| {
            let info = LayerInfo {
                name: l.name.clone(),
                offset,
                full_offset: offset,
                numel: l.numel,
                sg: l.sg,
                sa: l.sa,
                bias: l.bias,
                order: l.order,
            };
            offset += l.numel;
            info
        })
        .collect();
    let p = offset;
    let body = match h.body.as_str() {
        "dense" => FimBody::Dense(mat("dense", p, p)?.into()),
        "lowrank" => {
            let rows = st.tensor("lowrank").map_or(0, |v| v.shape()[0]);
            FimBody::LowRank(mat("lowrank", rows, p)?)
        }
        _ => FimBody::Blocks(
            h.layers
                .iter()
                .map(|l| {
                    let k = |s: &str| format!("{}.{s}", l.name);
                    Ok(match l.block.as_str() {
                        "dense" => Block::Dense(Stored::from(mat(&k("dense"), l.numel, l.numel)?)),
                        "diag" => Block::Diag(mat(&k("diag"), 1, l.numel)?.data),
                        "kfac" => Block::Kfac {
                            a: Stored::from(mat(&k("A"), l.sa, l.sa)?),
                            g: Stored::from(mat(&k("G"), l.sg, l.sg)?),
                        },
                        "ekfac" => Block::Ekfac {
                            ua: Stored::from(mat(&k("UA"), l.sa, l.sa)?),
                            ug: Stored::from(mat(&k("UG"), l.sg, l.sg)?),
                            d: mat(&k("D"), l.sg, l.sa)?,
                        },
                        "quasidiag" => Block::QuasiDiag {
                            diag: mat(&k("diag"), 1, l.numel)?.data,
                            cross: mat(&k("cross"), l.sg, l.sa.saturating_sub(1))?,
                        },
                        other => {
                            return Err(format!(
                                "`{}`: layer `{}` has an unknown block `{other}`",
                                path.display(),
                                l.name
                            ))
                        }
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    let fim = Fim {
        layers,
        body,
        n: h.n,
        refit: h.refit,
    };
    Ok((h, fim))
}

/// The structure a stored body has: `Dense`, `LowRank`, the one kind of
/// all its blocks (`BlockDiag` for Dense blocks), or `mix`.
pub fn structure_of(f: &Fim) -> String {
    match &f.body {
        FimBody::Dense(_) => "Dense".into(),
        FimBody::LowRank(_) => "LowRank".into(),
        FimBody::Blocks(b) => {
            let kinds: std::collections::BTreeSet<&str> = b.iter().map(block_kind).collect();
            match kinds.into_iter().collect::<Vec<_>>().as_slice() {
                ["dense"] => "BlockDiag",
                ["diag"] => "Diag",
                ["kfac"] => "KFAC",
                ["ekfac"] => "EKFAC",
                ["quasidiag"] => "QuasiDiag",
                _ => "mix",
            }
            .into()
        }
    }
}
