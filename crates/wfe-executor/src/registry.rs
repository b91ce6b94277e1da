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

    /// The executor for an engine if it can take work now, or why not ([`EngineUnavailable`],
    /// whose message says what to do about it).
    pub async fn resolve(
        &self,
        engine: &ExecutionEngine,
    ) -> Result<&Arc<dyn Executor>, EngineUnavailable> {
        let Some(executor) = self.get(engine) else {
            return Err(EngineUnavailable::NotRegistered {
                engine: engine.as_str().to_string(),
                available: self.engines().map(|e| e.as_str().to_string()).collect(),
            });
        };
        match executor.availability().await {
            Availability::Available => Ok(executor),
            Availability::Unavailable(hint) => Err(EngineUnavailable::Unavailable {
                engine: engine.as_str().to_string(),
                hint,
            }),
        }
    }
}

/// Why [`Registry::resolve`] has no executor for an engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineUnavailable {
    /// No executor serves the engine in this operator.
    #[error("execution engine {engine:?} is not supported by this operator (available: {})", available.join(", "))]
    NotRegistered {
        /// The engine asked for.
        engine: String,
        /// The engines this operator serves.
        available: Vec<String>,
    },
    /// Its executor cannot take work now ([`Availability::Unavailable`]).
    #[error("execution engine {engine:?} is not available: {hint}")]
    Unavailable {
        /// The engine asked for.
        engine: String,
        /// What an operator should do.
        hint: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = EngineUnavailable::NotRegistered {
            engine: "ansible".into(),
            available: vec!["tekton".into(), "job".into()],
        };
        assert_eq!(
            e.to_string(),
            "execution engine \"ansible\" is not supported by this operator (available: tekton, job)"
        );
        let e = EngineUnavailable::Unavailable {
            engine: "tekton".into(),
            hint: "install Tekton".into(),
        };
        assert_eq!(
            e.to_string(),
            "execution engine \"tekton\" is not available: install Tekton"
        );
    }
}
