//! The workflow catalog's view of a workflow, and the one mapping from a catalog entry to a
//! `WorkflowExecutionSpec` that services creating WorkflowExecutions share (BR-WE-014 TR-6).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, ResourceRequirements};
use serde::{Deserialize, Serialize};

use crate::{
    ExecutionConfig, ExecutionEngine, NamedDependency, ValidationError, WorkflowDependencies,
    WorkflowExecutionSpec, WorkflowRef,
};

/// A workflow as the catalog service returns it (snake_case JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Catalog identifier.
    pub workflow_id: String,
    /// Version of the workflow.
    pub version: String,
    /// Human-readable name (`workflow_name` is accepted too).
    #[serde(
        default,
        alias = "workflow_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// `tekton`, `job`, or absent (means `tekton`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_engine: Option<String>,
    /// Image (Job) or bundle (Tekton).
    pub container_image: String,
    /// Digest of the image, `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_digest: Option<String>,
    /// Service account the workflow runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Declared parameters; their names become the allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<CatalogParameter>>,
    /// Secret and ConfigMap dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<CatalogDependencies>,
    /// Job container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Default timeout, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A declared workflow parameter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogParameter {
    /// Parameter name (an environment variable name).
    pub name: String,
    /// Declared type, informational.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Whether the parameter must be given.
    #[serde(default)]
    pub required: bool,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Dependencies as the catalog lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogDependencies {
    /// Secret names.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// ConfigMap names.
    #[serde(default)]
    pub config_maps: Vec<String>,
}

/// What the caller adds to a catalog entry to make one request.
#[derive(Clone, Debug, Default)]
pub struct ExecutionRequest {
    /// `namespace/kind/name` or `kind/name`.
    pub target_resource: String,
    /// Parameter values.
    pub parameters: BTreeMap<String, String>,
    /// The RemediationRequest the execution belongs to.
    pub remediation_request_ref: ObjectReference,
    /// Selection confidence (0..1).
    pub confidence: Option<f64>,
    /// Selection rationale.
    pub rationale: Option<String>,
    /// Overrides the catalog's timeout.
    pub timeout: Option<String>,
}

/// Why a catalog entry and request do not make a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog names an engine this API does not know.
    #[error(
        "catalog entry {workflow_id}: unsupported execution_engine {engine:?} (expected \"tekton\" or \"job\")"
    )]
    UnsupportedEngine {
        /// Workflow id.
        workflow_id: String,
        /// The engine string.
        engine: String,
    },
    /// The image already carries a digest that disagrees with `container_digest`.
    #[error(
        "catalog entry {workflow_id}: container_image digest {image_digest} differs from container_digest {digest}"
    )]
    DigestMismatch {
        /// Workflow id.
        workflow_id: String,
        /// Digest in the image reference.
        image_digest: String,
        /// Digest field.
        digest: String,
    },
    /// A required parameter is missing.
    #[error("catalog entry {workflow_id}: required parameter {name} is missing")]
    MissingParameter {
        /// Workflow id.
        workflow_id: String,
        /// Parameter name.
        name: String,
    },
    /// The result fails validation.
    #[error("invalid WorkflowExecution spec: {0}")]
    Invalid(#[from] ValidationError),
}

impl CatalogEntry {
    /// The engine the catalog declares (missing or empty → `tekton`).
    pub fn engine(&self) -> Result<ExecutionEngine, CatalogError> {
        match ExecutionEngine::parse_lenient(self.execution_engine.as_deref().unwrap_or("")) {
            ExecutionEngine::Unsupported(engine) => Err(CatalogError::UnsupportedEngine {
                workflow_id: self.workflow_id.clone(),
                engine,
            }),
            e => Ok(e),
        }
    }

    /// The image reference to run: `container_image`, pinned with `container_digest` when the image
    /// does not already carry a digest.
    pub fn pinned_image(&self) -> Result<String, CatalogError> {
        let image = self.container_image.trim();
        match (
            image.rsplit_once('@'),
            self.container_digest.as_deref().filter(|d| !d.is_empty()),
        ) {
            (Some((_, image_digest)), Some(digest)) if image_digest != digest => {
                Err(CatalogError::DigestMismatch {
                    workflow_id: self.workflow_id.clone(),
                    image_digest: image_digest.to_string(),
                    digest: digest.to_string(),
                })
            }
            (None, Some(digest)) => Ok(format!("{image}@{digest}")),
            _ => Ok(image.to_string()),
        }
    }

    /// Builds the spec of a WorkflowExecution for this workflow: the engine, image, digest, service
    /// account, dependencies, resources and parameter allow-list come from the catalog; target,
    /// parameters and references from the request. The result is validated.
    pub fn to_spec(
        &self,
        request: ExecutionRequest,
    ) -> Result<WorkflowExecutionSpec, CatalogError> {
        let execution_engine = self.engine()?;
        if let Some(params) = &self.parameters
            && let Some(missing) = params
                .iter()
                .find(|p| p.required && !request.parameters.contains_key(&p.name))
        {
            return Err(CatalogError::MissingParameter {
                workflow_id: self.workflow_id.clone(),
                name: missing.name.clone(),
            });
        }
        let dependencies = self.dependencies.as_ref().map(|d| WorkflowDependencies {
            secrets: d
                .secrets
                .iter()
                .map(|n| NamedDependency { name: n.clone() })
                .collect(),
            config_maps: d
                .config_maps
                .iter()
                .map(|n| NamedDependency { name: n.clone() })
                .collect(),
        });
        let timeout = request.timeout.or_else(|| self.timeout.clone());
        let service_account_name = self.service_account_name.clone().filter(|s| !s.is_empty());
        let execution_config =
            (timeout.is_some() || service_account_name.is_some()).then_some(ExecutionConfig {
                timeout,
                service_account_name,
            });
        let spec = WorkflowExecutionSpec {
            execution_engine,
            workflow_ref: WorkflowRef {
                workflow_id: self.workflow_id.clone(),
                version: self.version.clone(),
                name: self.name.clone(),
                container_image: self.pinned_image()?,
                container_digest: self.container_digest.clone(),
                dependencies,
                resources: self.resources.clone(),
                declared_parameter_names: self
                    .parameters
                    .as_ref()
                    .map(|ps| ps.iter().map(|p| p.name.clone()).collect()),
            },
            target_resource: request.target_resource,
            parameters: request.parameters,
            execution_config,
            remediation_request_ref: request.remediation_request_ref,
            confidence: request.confidence,
            rationale: request.rationale,
        };
        spec.validate()?;
        Ok(spec)
    }
}
