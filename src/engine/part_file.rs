//! A part of a sharded representation on disk: one safetensors file of
//! f64 tensors (host values, so an f32 run's parts keep every digit it
//! computed) whose metadata says which plan, step, stage and part it is.

use crate::geometry::parts::{Part, PartData};
use crate::geometry::repr::{Block, FimBody};
use crate::linalg::{Mat, Stored};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "nngeo-part-1";

/// What a part file must be to be reduced with the others.
pub(super) struct Expect<'a> {
    pub plan: &'a str,
    pub step: u32,
    pub stage: &'a str,
    pub index: usize,
    pub count: usize,
}

fn range(r: (usize, usize)) -> String {
    format!("{},{}", r.0, r.1)
}

fn parse_range(s: &str) -> Option<(usize, usize)> {
    let (a, b) = s.split_once(',')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

type Named<'d> = Vec<crate::geometry::repr_io::Named<'d>>;

fn mat<'d>(t: &mut Named<'d>, name: String, m: &'d Mat) {
    t.push((name, vec![m.rows, m.cols], Cow::Borrowed(&m.data)));
}

/// A stored matrix's values (downloaded where it is held on a device).
fn stored<'d>(t: &mut Named<'d>, name: String, m: &'d Stored) -> Result<(), String> {
    let values = m.values_f64().map_err(|e| e.to_string())?;
    t.push((name, vec![m.rows(), m.cols()], values));
    Ok(())
}

/// The tensors of a part, named, with the body's layout.
fn tensors(data: &PartData) -> Result<(String, Named<'_>), String> {
    let mut t: Named<'_> = Vec::new();
    let kind = match data {
        PartData::Fim(FimBody::Dense(m)) => {
            stored(&mut t, "dense".into(), m)?;
            "fim:dense".to_string()
        }
        PartData::Fim(FimBody::Blocks(blocks)) => {
            let mut kinds = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                kinds.push(match b {
                    Block::Dense(m) => {
                        stored(&mut t, format!("{k}.dense"), m)?;
                        "dense"
                    }
                    Block::Diag(d) => {
                        t.push((format!("{k}.diag"), vec![d.len()], Cow::Borrowed(d)));
                        "diag"
                    }
                    Block::Kfac { a, g } => {
                        stored(&mut t, format!("{k}.a"), a)?;
                        stored(&mut t, format!("{k}.g"), g)?;
                        "kfac"
                    }
                    Block::QuasiDiag { diag, cross } => {
                        t.push((format!("{k}.diag"), vec![diag.len()], Cow::Borrowed(diag)));
                        mat(&mut t, format!("{k}.cross"), cross);
                        "quasidiag"
                    }
                    Block::Ekfac { ua, ug, d } => {
                        stored(&mut t, format!("{k}.ua"), ua)?;
                        stored(&mut t, format!("{k}.ug"), ug)?;
                        mat(&mut t, format!("{k}.d"), d);
                        "ekfac"
                    }
                });
            }
            format!("fim:blocks:{}", kinds.join(","))
        }
        PartData::Fim(FimBody::LowRank(m)) => {
            mat(&mut t, "lowrank".into(), m);
            "fim:lowrank".to_string()
        }
        PartData::Diagonals(ds) => {
            for (i, d) in ds.iter().enumerate() {
                mat(&mut t, format!("{i}.d"), d);
            }
            format!("diagonals:{}", ds.len())
        }
        PartData::Kernel(m) => {
            mat(&mut t, "kernel".into(), m);
            "kernel".to_string()
        }
        PartData::Vector(v) => {
            t.push(("vector".into(), vec![v.len()], Cow::Borrowed(v)));
            "vector".to_string()
        }
    };
    Ok((kind, t))
}

/// Writes `part` to `path` atomically (a temporary file renamed over it).
pub(super) fn write(path: &Path, e: &Expect<'_>, part: &Part) -> Result<(), String> {
    let (kind, ts) = tensors(&part.data)?;
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("plan".to_string(), e.plan.to_string()),
        ("step".to_string(), e.step.to_string()),
        ("stage".to_string(), e.stage.to_string()),
        ("index".to_string(), part.index.to_string()),
        ("count".to_string(), part.count.to_string()),
        ("rows".to_string(), range(part.rows)),
        ("kind".to_string(), kind),
    ]);
    if let Some(c) = part.cols {
        meta.insert("cols".into(), range(c));
    }
    if let Some(b) = &part.basis {
        meta.insert("basis".into(), b.clone());
    }
    let data = crate::geometry::repr_io::f64_safetensors(&ts, meta)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    }
    crate::exec::run_dir::write_atomic(path, &data)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Reads the part at `path`, refusing one of another plan, step, stage or
/// part.
pub(super) fn read(path: &Path, e: &Expect<'_>) -> Result<Part, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read `{shown}`: {err}"))?;
    let bad = |why: String| format!("`{shown}` is not a usable part: {why}");
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|err| bad(err.to_string()))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("it has no metadata".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no `{k}` in its metadata")))
    };
    if get("format")? != FORMAT {
        return Err(bad(format!("its format is not {FORMAT}")));
    }
    if get("plan")? != e.plan {
        return Err(bad(
            "it was computed for another plan (the file or the options changed since); remove the run's parts/ folder to compute them again".into(),
        ));
    }
    let want = [
        ("step", e.step.to_string()),
        ("stage", e.stage.to_string()),
        ("index", e.index.to_string()),
        ("count", e.count.to_string()),
    ];
    for (k, v) in want {
        let got = get(k)?;
        if got != v {
            return Err(bad(format!("its {k} is {got}, not {v}")));
        }
    }
    let rows = parse_range(&get("rows")?).ok_or_else(|| bad("bad `rows`".into()))?;
    let cols = match meta.get("cols") {
        Some(c) => Some(parse_range(c).ok_or_else(|| bad("bad `cols`".into()))?),
        None => None,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|err| bad(err.to_string()))?;
    let vec_of = |name: &str| -> Result<(Vec<usize>, Vec<f64>), String> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("no tensor `{name}`")))?;
        if t.dtype() != safetensors::Dtype::F64 {
            return Err(bad(format!("tensor `{name}` is not f64")));
        }
        let data = t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok((t.shape().to_vec(), data))
    };
    let mat = |name: &str| -> Result<Mat, String> {
        let (shape, data) = vec_of(name)?;
        match shape[..] {
            [r, c] => Ok(Mat::from_vec(r, c, data)),
            _ => Err(bad(format!("tensor `{name}` is not a matrix"))),
        }
    };
    let kind = get("kind")?;
    let data = if kind == "fim:dense" {
        PartData::Fim(FimBody::Dense(mat("dense")?.into()))
    } else if kind == "fim:lowrank" {
        PartData::Fim(FimBody::LowRank(mat("lowrank")?))
    } else if let Some(list) = kind.strip_prefix("fim:blocks:") {
        let blocks = list
            .split(',')
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(k, b)| {
                Ok(match b {
                    "dense" => Block::Dense(Stored::from(mat(&format!("{k}.dense"))?)),
                    "diag" => Block::Diag(vec_of(&format!("{k}.diag"))?.1),
                    "kfac" => Block::Kfac {
                        a: Stored::from(mat(&format!("{k}.a"))?),
                        g: Stored::from(mat(&format!("{k}.g"))?),
                    },
                    "quasidiag" => Block::QuasiDiag {
                        diag: vec_of(&format!("{k}.diag"))?.1,
                        cross: mat(&format!("{k}.cross"))?,
                    },
                    "ekfac" => Block::Ekfac {
                        ua: Stored::from(mat(&format!("{k}.ua"))?),
                        ug: Stored::from(mat(&format!("{k}.ug"))?),
                        d: mat(&format!("{k}.d"))?,
                    },
                    other => return Err(bad(format!("unknown block kind `{other}`"))),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        PartData::Fim(FimBody::Blocks(blocks))
    } else if let Some(n) = kind.strip_prefix("diagonals:") {
        let n: usize = n.parse().map_err(|_| bad("bad diagonal count".into()))?;
        PartData::Diagonals(
            (0..n)
                .map(|i| mat(&format!("{i}.d")))
                .collect::<Result<_, _>>()?,
        )
    } else if kind == "kernel" {
        PartData::Kernel(mat("kernel")?)
    } else if kind == "vector" {
        PartData::Vector(vec_of("vector")?.1)
    } else {
        return Err(bad(format!("unknown kind `{kind}`")));
    };
    Ok(Part {
        index: e.index,
        count: e.count,
        rows,
        cols,
        basis: meta.get("basis").cloned(),
        data,
    })
}
