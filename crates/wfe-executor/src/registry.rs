//! Engine → executor registry.

use std::{collections::BTreeMap, sync::Arc};

use wfe_api::ExecutionEngine;

use crate::{Availability, Executor};

/// Maps each engine to its executor. Built once at start-up by the binary.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    executors: BTreeMap<ExecutionEngine, Arc<dyn Executor>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an executor for the engine it serves, replacing any previous one.
    pub fn register(&mut self, executor: Arc<dyn Executor>) -> &mut Self {
        self.executors.insert(executor.engine(), executor);
        self
    }

    /// Builder form of [`Registry::register`].
    pub fn with(mut self, executor: Arc<dyn Executor>) -> Self {
        self.register(executor);
        self
    }

    /// The executor for an engine.
    pub fn get(&self, engine: &ExecutionEngine) -> Option<&Arc<dyn Executor>> {
        self.executors.get(engine)
    }

    /// Registered engines.
    pub fn engines(&self) -> impl Iterator<Item = &ExecutionEngine> {
        self.executors.keys()
    }

    /// The executor for an engine if it can take work now, or a message saying why not and what
    /// to do about it.
    pub async fn resolve(&self, engine: &ExecutionEngine) -> Result<&Arc<dyn Executor>, String> {
        let Some(executor) = self.get(engine) else {
            let known: Vec<&str> = self.engines().map(ExecutionEngine::as_str).collect();
            return Err(format!(
                "execution engine {:?} is not supported by this operator (available: {})",
                engine.as_str(),
                known.join(", ")
            ));
        };
        match executor.availability().await {
            Availability::Available => Ok(executor),
            Availability::Unavailable(hint) => Err(format!(
                "execution engine {:?} is not available: {hint}",
                engine.as_str()
            )),
        }
    }
}
