//! A backend that prepares fine and then panics on every step.

use nngeo::backend::{Backend, BackendError, BackendInfo, Emitted, RunContext, StepOutput};
use nngeo::plan::{Plan, Step};
use nngeo::plugin::BackendPlugin;

struct Panicking;

impl Backend for Panicking {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "panicking".into(),
            version: "0".into(),
            devices: vec!["cpu".into()],
            dtypes: vec![],
            capabilities: vec![],
        }
    }
    fn prepare(&mut self, _: &Plan, _: &RunContext) -> Result<(), BackendError> {
        Ok(())
    }
    fn run(
        &mut self,
        _: &Plan,
        step: &Step,
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<StepOutput, BackendError> {
        // One result first: the host must keep it although the step dies.
        emit(Emitted {
            step_id: step.id,
            key: "before_panic".into(),
            train_step: None,
            train_time: None,
            tags: Default::default(),
            output: StepOutput::Scalar { value: 1.5 },
        });
        panic!("deliberate panic in step #{}", step.id.0)
    }
    fn warnings(&mut self) -> Vec<String> {
        panic!("deliberate panic in warnings")
    }
}

struct Plugin;

impl BackendPlugin for Plugin {
    const NAME: &'static str = "panicking";
    fn framework() -> String {
        "none".into()
    }
    fn create() -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(Panicking))
    }
}

nngeo::export_backend!(Plugin);
