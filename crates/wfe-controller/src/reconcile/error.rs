//! Errors of one reconcile, with the category the error metric and the retry policy use.

use wfe_executor::ExecutorError;

use crate::audit;

/// Errors of one reconcile; all are retried ([`crate::error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An executor failed transiently.
    #[error("executor: {0}")]
    Executor(#[from] ExecutorError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Audit delivery failed; retried later.
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
}

impl Error {
    /// The error inside the finalizer wrapper, if any.
    fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// A stale-cache conflict (expected; retried quickly).
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self.inner() {
            Error::Kube(kube::Error::Api(s)) => s.code == 409,
            Error::Finalizer(f) => {
                matches!(f.as_ref(), F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) if s.code == 409)
            }
            _ => false,
        }
    }

    /// A metric category.
    pub fn category(&self) -> &'static str {
        if self.is_conflict() {
            return "conflict";
        }
        match self.inner() {
            Error::Kube(_) => "kubernetes",
            Error::Executor(_) => "executor",
            Error::Finalizer(_) => "finalizer",
            Error::Audit(_) => "audit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        let mut s = kube::core::Status::failure("x", "y");
        s.code = code;
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn categories_see_through_the_finalizer_wrapper() {
        use kube::runtime::finalizer::Error as F;
        assert_eq!(Error::Kube(api(409)).category(), "conflict");
        assert_eq!(Error::Kube(api(500)).category(), "kubernetes");
        let wrapped = Error::Finalizer(Box::new(F::ApplyFailed(Error::Executor(
            ExecutorError::transient("t"),
        ))));
        assert_eq!(wrapped.category(), "executor");
        let conflict = Error::Finalizer(Box::new(F::AddFinalizer(api(409))));
        assert!(conflict.is_conflict());
        assert_eq!(
            Error::Finalizer(Box::new(F::UnnamedObject)).category(),
            "finalizer"
        );
    }
}
