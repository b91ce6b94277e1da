//! The execution engine selector (`spec.executionEngine`).

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which backend runs a workflow.
///
/// `tekton` is the default: a resource without the field, or with an empty string, runs on Tekton
/// (backward compatibility with resources written before the Job backend existed). A value that is
/// neither is kept as [`ExecutionEngine::Unsupported`] so that the operator can fail the resource with
/// a clear `UnsupportedEngine` reason instead of failing to read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecutionEngine {
    /// A Tekton `PipelineRun` (the default).
    #[default]
    Tekton,
    /// A `batch/v1` Job.
    Job,
    /// Any other value. The CRD refuses these; they can only come from an older or hand-edited CRD.
    Unsupported(String),
}

impl ExecutionEngine {
    /// The engines this version of the API knows.
    pub const KNOWN: [ExecutionEngine; 2] = [ExecutionEngine::Tekton, ExecutionEngine::Job];

    /// The wire value (`tekton`, `job`, or the unsupported string as written).
    pub fn as_str(&self) -> &str {
        match self {
            ExecutionEngine::Tekton => "tekton",
            ExecutionEngine::Job => "job",
            ExecutionEngine::Unsupported(s) => s,
        }
    }

    /// Parses a wire value leniently: empty means `tekton`, case and surrounding spaces are ignored.
    pub fn parse_lenient(value: &str) -> Self {
        let v = value.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("tekton") {
            ExecutionEngine::Tekton
        } else if v.eq_ignore_ascii_case("job") {
            ExecutionEngine::Job
        } else {
            ExecutionEngine::Unsupported(v.to_string())
        }
    }

    /// True for `tekton` and `job`.
    pub fn is_known(&self) -> bool {
        !matches!(self, ExecutionEngine::Unsupported(_))
    }
}

impl fmt::Display for ExecutionEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionEngine {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse_lenient(s))
    }
}

impl Serialize for ExecutionEngine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExecutionEngine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `null` is treated like a missing field.
        let value = Option::<String>::deserialize(deserializer)?;
        Ok(value
            .as_deref()
            .map(Self::parse_lenient)
            .unwrap_or_default())
    }
}

impl JsonSchema for ExecutionEngine {
    fn schema_name() -> Cow<'static, str> {
        "ExecutionEngine".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Backend that runs the workflow: `tekton` (a Tekton PipelineRun, the default) or `job` (a batch/v1 Job). An empty string means `tekton`.",
            "enum": ["tekton", "job", ""],
            "default": "tekton"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_null_mean_tekton() {
        #[derive(Deserialize)]
        struct S {
            #[serde(default)]
            e: ExecutionEngine,
        }
        for json in [
            r#"{}"#,
            r#"{"e":""}"#,
            r#"{"e":null}"#,
            r#"{"e":"tekton"}"#,
            r#"{"e":" Tekton "}"#,
        ] {
            let s: S = serde_json::from_str(json).unwrap();
            assert_eq!(s.e, ExecutionEngine::Tekton, "{json}");
        }
        let s: S = serde_json::from_str(r#"{"e":"job"}"#).unwrap();
        assert_eq!(s.e, ExecutionEngine::Job);
        let s: S = serde_json::from_str(r#"{"e":"ansible"}"#).unwrap();
        assert_eq!(s.e, ExecutionEngine::Unsupported("ansible".into()));
        assert!(!s.e.is_known());
    }

    #[test]
    fn serializes_to_wire_value() {
        assert_eq!(
            serde_json::to_string(&ExecutionEngine::Job).unwrap(),
            r#""job""#
        );
        assert_eq!(
            serde_json::to_string(&ExecutionEngine::Tekton).unwrap(),
            r#""tekton""#
        );
        assert_eq!(ExecutionEngine::default().to_string(), "tekton");
    }
}
