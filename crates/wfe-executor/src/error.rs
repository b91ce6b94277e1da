//! Classified executor errors.

use wfe_api::FailureReason;

/// An error from a backend, classified so the controller knows whether to fail the request or
/// retry.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The API server denied the operator (RBAC). Ends the request with `Forbidden`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A quota or limit refused the resource. Ends the request with `ResourceExhausted`.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The API server refused the resource as invalid. Ends the request with `ConfigurationError`.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything that may succeed when retried (network, conflicts, server errors).
    #[error("transient: {0}")]
    Transient(String),
}

impl ExecutorError {
    /// The failure reason for a permanent error; `None` for transient ones.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        match self {
            ExecutorError::Forbidden(_) => Some(FailureReason::Forbidden),
            ExecutorError::ResourceExhausted(_) => Some(FailureReason::ResourceExhausted),
            ExecutorError::Invalid(_) => Some(FailureReason::ConfigurationError),
            ExecutorError::Transient(_) => None,
        }
    }

    /// The message without the classification prefix.
    pub fn message(&self) -> &str {
        match self {
            ExecutorError::Forbidden(m)
            | ExecutorError::ResourceExhausted(m)
            | ExecutorError::Invalid(m)
            | ExecutorError::Transient(m) => m,
        }
    }

    /// Classifies an error returned by the API server for a write.
    pub fn from_kube(action: &str, err: kube::Error) -> Self {
        match &err {
            kube::Error::Api(status) => {
                let msg = format!("{action}: {}", status.message);
                let lower = status.message.to_ascii_lowercase();
                match status.code {
                    403 if lower.contains("exceeded quota") || lower.contains("quota") => {
                        ExecutorError::ResourceExhausted(msg)
                    }
                    403 => ExecutorError::Forbidden(msg),
                    422 | 400 => ExecutorError::Invalid(msg),
                    _ => ExecutorError::Transient(msg),
                }
            }
            _ => ExecutorError::Transient(format!("{action}: {err}")),
        }
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
        assert!(is_not_found(&api(404, "nf")) && !is_not_found(&api(409, "c")));
        assert!(is_already_exists(&api(409, "exists")));
    }
}
