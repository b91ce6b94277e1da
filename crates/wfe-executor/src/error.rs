//! Classified executor errors.

use wfe_api::FailureReason;

/// The cause of an [`ExecutorError`]: the API server's error, an engine's I/O error, a
/// [`wfe_api::FieldError`], ...
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a backend, classified so the controller knows whether to fail the request or
/// retry.
///
/// Every variant carries the `message` users see (in the `Failed` condition and Events: what was
/// attempted and what the other side said) and, when there is one, the error that caused it as
/// its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The API server denied the operator (RBAC). Ends the request with `Forbidden`.
    #[error("forbidden: {message}")]
    Forbidden {
        /// What was attempted and why it was refused.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
    /// A quota or limit refused the resource. Ends the request with `ResourceExhausted`.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// What was attempted and which limit refused it.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
    /// The API server (or the backend) refused the resource as invalid. Ends the request with
    /// `ConfigurationError`.
    #[error("invalid: {message}")]
    Invalid {
        /// What is invalid.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
    /// Anything that may succeed when retried (network, conflicts, server errors).
    #[error("transient: {message}")]
    Transient {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
}

impl ExecutorError {
    /// A [`Forbidden`](ExecutorError::Forbidden) error without a source.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ExecutorError::Forbidden {
            message: message.into(),
            source: None,
        }
    }

    /// A [`ResourceExhausted`](ExecutorError::ResourceExhausted) error without a source.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        ExecutorError::ResourceExhausted {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Invalid`](ExecutorError::Invalid) error without a source.
    pub fn invalid(message: impl Into<String>) -> Self {
        ExecutorError::Invalid {
            message: message.into(),
            source: None,
        }
    }

    /// A [`Transient`](ExecutorError::Transient) error without a source.
    pub fn transient(message: impl Into<String>) -> Self {
        ExecutorError::Transient {
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `cause`.
    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Self {
        match &mut self {
            ExecutorError::Forbidden { source, .. }
            | ExecutorError::ResourceExhausted { source, .. }
            | ExecutorError::Invalid { source, .. }
            | ExecutorError::Transient { source, .. } => *source = Some(cause.into()),
        }
        self
    }

    /// The failure reason for a permanent error; `None` for transient ones.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        match self {
            ExecutorError::Forbidden { .. } => Some(FailureReason::Forbidden),
            ExecutorError::ResourceExhausted { .. } => Some(FailureReason::ResourceExhausted),
            ExecutorError::Invalid { .. } => Some(FailureReason::ConfigurationError),
            ExecutorError::Transient { .. } => None,
        }
    }

    /// The message without the classification prefix.
    pub fn message(&self) -> &str {
        match self {
            ExecutorError::Forbidden { message, .. }
            | ExecutorError::ResourceExhausted { message, .. }
            | ExecutorError::Invalid { message, .. }
            | ExecutorError::Transient { message, .. } => message,
        }
    }

    /// Classifies an error returned by the API server for `action` (e.g. `create Job ns/name`);
    /// the message is the action and the API server's message, the source `err` itself.
    pub fn from_kube(action: &str, err: kube::Error) -> Self {
        let classified = match &err {
            kube::Error::Api(status) => {
                let msg = format!("{action}: {}", status.message);
                let lower = status.message.to_ascii_lowercase();
                match status.code {
                    403 if lower.contains("exceeded quota") || lower.contains("quota") => {
                        ExecutorError::resource_exhausted(msg)
                    }
                    403 => ExecutorError::forbidden(msg),
                    422 | 400 => ExecutorError::invalid(msg),
                    _ => ExecutorError::transient(msg),
                }
            }
            _ => ExecutorError::transient(format!("{action}: {err}")),
        };
        classified.caused_by(err)
    }
}

/// True when `err` is an API NotFound.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// True when `err` is an API AlreadyExists / Conflict on create.
pub fn is_already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        let mut s = kube::core::Status::failure(message, "x");
        s.code = code;
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn the_api_error_is_the_source() {
        use std::error::Error as _;
        let e = ExecutorError::from_kube("delete Lease ns/x", api(403, "leases is forbidden"));
        let source = e.source().expect("a source");
        let kube = source
            .downcast_ref::<kube::Error>()
            .expect("the kube::Error");
        assert!(matches!(kube, kube::Error::Api(s) if s.code == 403));
        assert!(ExecutorError::transient("x").source().is_none());
        let io = std::io::Error::other("connection reset");
        let e = ExecutorError::transient("GET /api/v2/jobs/1: connection reset").caused_by(io);
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("connection reset")
        );
        assert_eq!(e.failure_reason(), None);
    }

    #[test]
    fn classification() {
        let e = ExecutorError::from_kube(
            "create Job",
            api(403, "jobs.batch is forbidden: User cannot create"),
        );
        assert_eq!(e.failure_reason(), Some(FailureReason::Forbidden));
        let e = ExecutorError::from_kube(
            "create Job",
            api(
                403,
                "exceeded quota: compute-resources, requested: count/jobs.batch=1",
            ),
        );
        assert_eq!(e.failure_reason(), Some(FailureReason::ResourceExhausted));
        let e = ExecutorError::from_kube("create Job", api(422, "Job.batch \"x\" is invalid"));
        assert_eq!(e.failure_reason(), Some(FailureReason::ConfigurationError));
        assert!(e.message().starts_with("create Job: "));
        let e = ExecutorError::from_kube("create Job", api(500, "etcdserver: timeout"));
        assert_eq!(e.failure_reason(), None);
        assert_eq!(e.message(), "create Job: etcdserver: timeout");
        assert_eq!(e.to_string(), "transient: create Job: etcdserver: timeout");
        assert!(is_not_found(&api(404, "nf")) && !is_not_found(&api(409, "c")));
        assert!(is_already_exists(&api(409, "exists")));
    }
}
