//! What names stand for while checking: values with their plan step, and
//! sweep variables bound to the (unevaluated) expression of each list item.

use crate::data::DataInfo;
use crate::plan::{ModelSpec, Object, ReprOptions, StepId, Structure};
use crate::syntax::{Expr, Span};
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub struct DataV {
    pub step: StepId,
    pub name: String,
    pub info: DataInfo,
    /// Labels were corrupted with `label_noise`, so `flipped`/`clean` exist.
    pub noisy: bool,
    /// How many labels `label_noise` flipped, where that is known before
    /// the run (right after it, or through operations that keep every
    /// example): what `only(flipped)` keeps.
    pub flipped: Option<usize>,
}

impl DataV {
    /// How to name this dataset in a message: `` `name` ``, or "this
    /// dataset" for an unnamed intermediate (`_1`).
    pub fn shown(&self) -> String {
        if self.name.is_empty() || self.name.starts_with('_') {
            "this dataset".into()
        } else {
            format!("`{}`", self.name)
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelV {
    pub step: StepId,
    pub name: String,
    pub spec: Rc<ModelSpec>,
}

impl ModelV {
    /// How to name this model in a message (see [`DataV::shown`]).
    pub fn shown(&self) -> String {
        if self.name.is_empty() || self.name.starts_with('_') {
            "the model".into()
        } else {
            format!("`{}`", self.name)
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReprV {
    pub step: StepId,
    pub object: Object,
    pub structure: Structure,
    pub model: ModelV,
    pub data: StepId,
    pub options: ReprOptions,
}

#[derive(Clone, Debug)]
pub struct VecV {
    pub step: StepId,
    /// Number of entries.
    pub len: u64,
    /// The layers it holds, in order, with their parameter counts.
    pub layers: Vec<(String, u64)>,
}

#[derive(Clone, Debug)]
pub enum Val {
    Data(DataV),
    Model(ModelV),
    Repr(Box<ReprV>),
    Vector(VecV),
    /// A layer name, from `for layer in layers(net)`.
    Layer(String),
}

impl Val {
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Data(_) => "dataset",
            Val::Model(_) => "model",
            Val::Repr(r) => match r.object {
                Object::Fim => "Fisher representation",
                Object::Ntk => "NTK representation",
                Object::Hessian => "Hessian representation",
            },
            Val::Vector(_) => "vector",
            Val::Layer(_) => "layer",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Binding<'a> {
    Val(Val, Span),
    /// A sweep variable or a `let` of a plain value: the expression is
    /// checked where the name is used, in that context.
    Expr(&'a Expr, Span),
}

impl Binding<'_> {
    pub fn span(&self) -> Span {
        match self {
            Binding::Val(_, s) | Binding::Expr(_, s) => *s,
        }
    }
}

#[derive(Default)]
pub struct Scopes<'a> {
    frames: Vec<BTreeMap<String, Binding<'a>>>,
}

impl<'a> Scopes<'a> {
    pub fn push(&mut self) {
        self.frames.push(BTreeMap::new());
    }
    pub fn pop(&mut self) {
        self.frames.pop();
    }
    /// How many frames are open.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }
    pub fn get(&self, name: &str) -> Option<&Binding<'a>> {
        self.frames.iter().rev().find_map(|f| f.get(name))
    }
    /// The binding of `name` in the innermost frame, if any.
    pub fn local(&self, name: &str) -> Option<&Binding<'a>> {
        self.frames.last().and_then(|f| f.get(name))
    }
    pub fn insert(&mut self, name: String, b: Binding<'a>) {
        if self.frames.is_empty() {
            self.push();
        }
        self.frames.last_mut().unwrap().insert(name, b);
    }
    /// Every visible name whose value satisfies `pred` (for suggestions).
    pub fn names_where(&self, pred: impl Fn(&Binding<'a>) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .frames
            .iter()
            .flat_map(|f| f.iter())
            .filter(|(_, b)| pred(b))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
