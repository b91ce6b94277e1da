//! Counts the operator's Kubernetes API requests (`workflowexecution_kube_api_requests_total`),
//! by verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`)
//! and resource (`jobs`, `workflowexecutions/status`, ...; never an object name), with a tower
//! layer on the kube client. `cargo xtask bench` divides these counts by the executions it ran.

use std::task::{Context, Poll};

use http::{Method, Request};
use kube::{Client, client::ClientBuilder};
use tower::{Layer, Service};

/// Kubernetes API requests sent, by verb and resource.
pub const API_REQUESTS: &str = "workflowexecution_kube_api_requests_total";

/// Registers the description (call once after installing a recorder).
pub fn describe() {
    metrics::describe_counter!(
        API_REQUESTS,
        "Kubernetes API requests sent by the operator, by verb and resource"
    );
}

/// The operator's `User-Agent`. The API server names the field manager of the operator's writes
/// after it (`we-operator` in `metadata.managedFields`), and its audit log shows it.
pub const USER_AGENT: &str = concat!("we-operator/", env!("CARGO_PKG_VERSION"));

/// A kube client (in-cluster or KUBECONFIG, as `Client::try_default`) that counts its requests
/// and introduces itself as [`USER_AGENT`].
pub async fn client() -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountLayer)
        .build())
}

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountLayer;

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count { inner }
    }
}

/// The service: counts, then forwards unchanged.
#[derive(Clone, Debug)]
pub struct Count<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        metrics::counter!(API_REQUESTS, "verb" => verb, "resource" => resource).increment(1);
        self.inner.call(req)
    }
}

/// The Kubernetes verb and the resource (`plural` or `plural/subresource`) of a request.
fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => &[],
    };
    // [namespaces, ns, plural, name?, sub?] or [plural, name?, sub?]
    let (resource, name, sub) = match rest {
        ["namespaces", _, plural, tail @ ..] => (Some(*plural), tail.first(), tail.get(1)),
        [plural, tail @ ..] => (Some(*plural), tail.first(), tail.get(1)),
        [] => (None, None, None),
    };
    let collection = resource.is_some() && name.is_none();
    let resource = match (resource, sub) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => r.to_string(),
        (None, _) => "other".to_string(),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests() {
        let c = |m: Method, p: &str, q: Option<&str>| {
            let (v, r) = classify(&m, p, q);
            (v, r)
        };
        assert_eq!(
            c(
                Method::GET,
                "/apis/batch/v1/namespaces/kubernaut-workflows/jobs/wfe-1",
                None
            ),
            ("get", "jobs".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/batch/v1/namespaces/x/jobs",
                Some("labelSelector=a&watch=true&timeoutSeconds=290")
            ),
            ("watch", "jobs".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/namespaces/x/events",
                Some("fieldSelector=a")
            ),
            ("list", "events".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/kubernaut.ai/v1alpha1/namespaces/x/workflowexecutions/a/status",
                None
            ),
            ("patch", "workflowexecutions/status".into())
        );
        assert_eq!(
            c(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/x/events",
                None
            ),
            ("create", "events".into())
        );
        assert_eq!(
            c(Method::DELETE, "/apis/batch/v1/namespaces/x/jobs/j", None),
            ("delete", "jobs".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/a.b",
                None
            ),
            ("get", "customresourcedefinitions".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/x", None),
            ("get", "namespaces".into())
        );
        assert_eq!(c(Method::GET, "/version", None), ("get", "other".into()));
    }
}
