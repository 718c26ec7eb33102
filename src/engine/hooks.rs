//! A `train` step: the training loop of [`super::train`] with the plan's
//! hooks measured on the live model and every curve streamed out.

use super::*;
use crate::plan::Penalty;

/// Runs hook steps on the live model and forwards results to the sink.
struct HookRunner<'a, 'e, O: Ops> {
    engine: &'a mut Engine<O>,
    plan: &'a Plan,
    train_id: StepId,
    w0: Vec<f64>,
    hooks: &'a [HookSpec],
    emit: &'a mut dyn FnMut(Emitted),
    /// The training run's optimiser-step clock, in seconds.
    clock: f64,
    /// The loss's penalty terms and the model being trained.
    penalties: &'a [Penalty],
    model: StepId,
    _e: std::marker::PhantomData<&'e ()>,
}

impl<O: Ops> TrainObserver<O> for HookRunner<'_, '_, O> {
    fn hook(&mut self, hook: usize, step: u64, net: &Net<O>) -> Result<(), String> {
        let live = net
            .with_params(self.engine.o(), net.params.clone())
            .map_err(|e| e.to_string())?;
        self.engine
            .values
            .insert(self.train_id, Value::Model(Box::new(live), self.w0.clone()));
        for &id in &self.hooks[hook].steps {
            // The value this step computed when the hook last fired goes
            // before it is computed again, not after (a block-diagonal
            // Fisher would be held twice). Later steps read the new one.
            self.engine.values.remove(&id);
            let hs = self.plan.step(id);
            let clock = self.clock;
            let mut inner = |mut e: Emitted| {
                e.train_step = e.train_step.or(Some(step));
                e.train_time = e.train_time.or(Some(clock));
                (self.emit)(e)
            };
            let out = self
                .engine
                .run(self.plan, hs, &mut inner)
                .map_err(|e| e.to_string())?;
            if let Op::Measure { key, .. } = &hs.op {
                if let StepOutput::Scalar { value } = &out {
                    if !value.is_finite() {
                        return Err(format!(
                            "training stopped at step {step}: measurement `{key}` is {value} (the model diverged, or the measurement is undefined here)"
                        ));
                    }
                }
                (self.emit)(Emitted {
                    step_id: id,
                    key: key.clone(),
                    train_step: Some(step),
                    train_time: Some(self.clock),
                    tags: Default::default(),
                    output: out,
                });
            }
        }
        Ok(())
    }

    fn log(&mut self, key: &str, step: u64, value: f64, tags: &[(&str, String)]) {
        (self.emit)(Emitted {
            step_id: self.train_id,
            key: key.into(),
            train_step: Some(step),
            train_time: Some(self.clock),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            output: StepOutput::Scalar { value },
        });
    }

    fn penalty(&mut self, w: &[f64]) -> Result<Option<(f64, Vec<f64>)>, String> {
        if self.penalties.is_empty() {
            return Ok(None);
        }
        let e = &*self.engine;
        let mut value = 0.0;
        let mut grad = vec![0.0; w.len()];
        for p in self.penalties {
            // Where the term's entries sit in the flat weights, layer by
            // layer, in the order of the matrix (or of the model for `l2`).
            let repr = p.m.as_ref().map(|m| e.operand(m)).transpose()?;
            let segments: Vec<(String, usize, usize)> = match &repr {
                Some(r) => e
                    .infos(r)?
                    .into_iter()
                    .map(|l| (l.name, l.full_offset, l.numel))
                    .collect(),
                None => e
                    .model(self.model)?
                    .slots
                    .iter()
                    .map(|s| (s.name.clone(), s.offset, s.numel))
                    .collect(),
            };
            let anchor = p.anchor.map(|a| e.vector(a)).transpose()?;
            let mut d = Vec::with_capacity(segments.iter().map(|s| s.2).sum());
            for (name, at, numel) in &segments {
                let w = w
                    .get(*at..at + numel)
                    .ok_or_else(|| format!("layer `{name}` lies outside the trained weights"))?;
                match anchor {
                    Some(a) => d.extend(w.iter().zip(a.part(name)?).map(|(x, y)| x - y)),
                    None => d.extend_from_slice(w),
                }
            }
            let md = match repr.as_deref().map(|r| &r.kind) {
                None => d.clone(),
                Some(ReprKind::Fim(f)) => f.mv(&d).map_err(|e| e.to_string())?,
                Some(ReprKind::Implicit(_)) => e.implicit_mv(repr.as_deref().expect("some"), &d)?,
                Some(ReprKind::Ntk(_)) => return Err("a penalty's matrix is an NTK".into()),
            };
            value += p.coef * d.iter().zip(&md).map(|(x, y)| x * y).sum::<f64>();
            // ∇ c·dᵀMd = 2c·Md for the symmetric matrices a Fisher gives.
            let mut k = 0;
            for (_, at, numel) in &segments {
                for (gi, mi) in grad[*at..at + numel].iter_mut().zip(&md[k..k + numel]) {
                    *gi += 2.0 * p.coef * mi;
                }
                k += numel;
            }
        }
        Ok(Some((value, grad)))
    }

    fn clock(&mut self, seconds: f64) {
        self.clock = seconds;
    }

    fn difficulty(&mut self, score: &[f64], bin: &[usize], k: usize) -> Result<(), String> {
        let dir = self.engine.ctx.out_dir.join("examples");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join(format!("train_{}.difficulty.json", self.train_id.0));
        let doc = serde_json::json!({
            "score": score,
            "bin": bin,
            "bins": k,
            "method": difficulty::METHOD,
        });
        std::fs::write(&path, doc.to_string())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }

    fn examples(&mut self, step: u64, loss: &[f64], correct: &[bool]) -> Result<(), String> {
        // One line per checkpoint: losses as f32 text and correctness as a
        // 0/1 string, never one line per example.
        let dir = self.engine.ctx.out_dir.join("examples");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join(format!("train_{}.jsonl", self.train_id.0));
        let line = serde_json::json!({
            "step": step,
            "loss": loss.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            "correct": correct.iter().map(|&c| if c { '1' } else { '0' }).collect::<String>(),
        });
        // One write of the whole line; cut back on failure (disk full).
        crate::exec::jsonl::append_line(&path, &line.to_string())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }
}

impl<O: Ops> Engine<O> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train(
        &mut self,
        plan: &Plan,
        step: &Step,
        model: StepId,
        data: StepId,
        config: &TrainConfig,
        hooks: &[HookSpec],
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<Value<O>, String> {
        let (spec, params, w0) = match self.values.get(&model) {
            Some(Value::Model(m, w0)) => (m.spec.clone(), m.params.clone(), w0.clone()),
            _ => return Err(format!("step #{} is not a model", model.0)),
        };
        let snapshot = |id: StepId| -> Result<(O::T, Vec<f64>, usize, usize), String> {
            let d = self.data(id)?;
            Ok((
                d.x.clone(),
                d.y.clone(),
                d.host.info.n,
                d.host.info.target_dim.max(1),
            ))
        };
        let (x, y, n, td) = snapshot(data)?;
        let flipped = self.data(data)?.host.flipped.clone();
        let ev = config.eval.map(&snapshot).transpose()?;
        let per_epoch = n.div_ceil(config.batch.max(1)) as u64;
        let firing: Vec<Vec<u64>> = hooks
            .iter()
            .map(|h| h.schedule.firing_steps(config.total_steps, per_epoch))
            .collect();
        let o = self.o().clone();
        let train_data = TrainData {
            x: &x,
            y: &y,
            n,
            target_dim: td,
            flipped: &flipped,
        };
        let eval_data = ev.as_ref().map(|(x, y, n, td)| TrainData {
            x,
            y,
            n: *n,
            target_dim: *td,
            flipped: &[],
        });
        // A rerun into the same folder starts its per-example files afresh.
        let examples = self.ctx.out_dir.join("examples");
        for name in [
            format!("train_{}.jsonl", step.id.0),
            format!("train_{}.difficulty.json", step.id.0),
        ] {
            let path = examples.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove `{}`: {e}", path.display()))?;
            }
        }
        let mut runner = HookRunner {
            engine: self,
            plan,
            train_id: step.id,
            w0: w0.clone(),
            hooks,
            emit,
            clock: 0.0,
            penalties: &config.penalties,
            model,
            _e: std::marker::PhantomData,
        };
        let init = params.clone();
        let bins = difficulty::tracking_bins(&o, &spec, &params, &train_data, config, &mut runner)?;
        let fin = train::train_binned(
            &o,
            &spec,
            params,
            &train_data,
            eval_data.as_ref(),
            config,
            &firing,
            &mut runner,
            bins,
        );
        // What the hooks computed is not needed any more (a block-diagonal
        // Fisher can be hundreds of MB).
        for id in hooks.iter().flat_map(|h| &h.steps) {
            self.values.remove(id);
        }
        // The trained model keeps its mode: a linearised model stays linear.
        let net = Net::new(&o, &spec, fin?)
            .and_then(|n| n.reparam(&o, &config.mode, &init))
            .map_err(|e| e.to_string())?;
        Ok(Value::Model(Box::new(net), w0))
    }
}
