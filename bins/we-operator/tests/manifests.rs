//! The manifests in `deploy/`: every document parses into its Kubernetes type, the Deployment is
//! hardened, the RBAC is least-privilege, and the whole directory applies server-side to the real
//! control plane, with the operator's and the workflows' pods admitted under `restricted`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    admissionregistration::v1::{
        MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
        ValidatingAdmissionPolicyBinding,
    },
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde::Deserialize;
use serde_json::Value;
use wfe_api::WorkflowExecution;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // The chart's templates are not YAML until rendered; its rendering is what deploy/
            // holds (cargo xtask chart render). monitoring/ holds promtool's tests and a
            // dashboard, checked by cargo xtask monitoring.
            if path
                .file_name()
                .is_some_and(|n| n == "chart" || n == "monitoring")
            {
                continue;
            }
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn all_docs() -> Vec<(PathBuf, Value)> {
    yaml_files(&deploy())
        .into_iter()
        .flat_map(|p| docs(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", v["metadata"]["name"]))
}

#[test]
fn every_manifest_parses_into_its_type() {
    let mut kinds = Vec::new();
    for (path, doc) in all_docs() {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", path.display()))
            .to_string();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(&doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
            "Role" => drop(typed::<Role>(&doc)),
            "RoleBinding" => drop(typed::<RoleBinding>(&doc)),
            "Deployment" => drop(typed::<Deployment>(&doc)),
            "Service" => drop(typed::<Service>(&doc)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&doc)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(&doc)),
            // The workflow policy: what the operator will parse at start.
            "ConfigMap" => {
                let cm: k8s_openapi::api::core::v1::ConfigMap = typed(&doc);
                let data = cm.data.unwrap_or_default();
                let text = data
                    .get("policy.yaml")
                    .unwrap_or_else(|| panic!("{}: no policy.yaml", path.display()));
                wfe_controller::policy::WorkflowPolicy::from_yaml(text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&doc)),
            "ValidatingAdmissionPolicy" => {
                let p: ValidatingAdmissionPolicy = typed(&doc);
                assert_eq!(
                    p.spec.unwrap().failure_policy.as_deref(),
                    Some("Fail"),
                    "{}: a guarantee must not be skipped",
                    path.display()
                );
            }
            "ValidatingAdmissionPolicyBinding" => {
                let b: ValidatingAdmissionPolicyBinding = typed(&doc);
                assert_eq!(b.spec.validation_actions, vec!["Deny".to_string()]);
            }
            "MutatingAdmissionPolicy" => {
                let p: MutatingAdmissionPolicy = typed(&doc);
                // The finalizer at creation only saves the operator a write (it adds a missing
                // finalizer itself): it must never refuse a request. The identity stamps must
                // never be skipped.
                let expected = if p.metadata.name.as_deref()
                    == Some("workflowexecution-finalizer.kubernaut.ai")
                {
                    "Ignore"
                } else {
                    "Fail"
                };
                assert_eq!(
                    p.spec.unwrap().failure_policy.as_deref(),
                    Some(expected),
                    "{}: {:?}",
                    path.display(),
                    p.metadata.name
                );
            }
            "MutatingAdmissionPolicyBinding" => drop(typed::<MutatingAdmissionPolicyBinding>(&doc)),
            "WorkflowExecution" => {
                let w: WorkflowExecution = typed(&doc);
                w.spec
                    .validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            // A sample workflow bundle: what docs/workflow-authors.md asks of one.
            "Pipeline" => {
                assert_eq!(doc["apiVersion"], "tekton.dev/v1", "{}", path.display());
                assert_eq!(doc["metadata"]["name"], "workflow", "{}", path.display());
                let tasks = doc["spec"]["tasks"].as_array().unwrap();
                for step in tasks
                    .iter()
                    .flat_map(|t| t["taskSpec"]["steps"].as_array().unwrap())
                {
                    let sc = &step["securityContext"];
                    assert!(
                        step["command"].is_array()
                            && sc["allowPrivilegeEscalation"] == false
                            && sc["capabilities"]["drop"] == serde_json::json!(["ALL"])
                            && sc["runAsNonRoot"] == true
                            && sc["seccompProfile"]["type"] == "RuntimeDefault",
                        "{}: step {} needs a command and a restricted security context",
                        path.display(),
                        step["name"]
                    );
                }
            }
            // The alerts, as the Prometheus Operator's type (promtool checks the rules).
            "PrometheusRule" => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                let rules = doc["spec"]["groups"][0]["rules"].as_array().unwrap();
                assert!(
                    rules
                        .iter()
                        .all(|r| r["alert"].is_string() && r["expr"].is_string())
                );
            }
            // The Prometheus Operator's type has no k8s-openapi binding: check its shape.
            "ServiceMonitor" => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                assert_eq!(doc["spec"]["endpoints"][0]["path"], "/metrics");
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        }
        kinds.push(kind);
    }
    for needed in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "CustomResourceDefinition",
        "WorkflowExecution",
        "ValidatingAdmissionPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == needed),
            "deploy/ lacks a {needed}"
        );
    }
}

fn deployment() -> Deployment {
    all_docs()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| typed(&d))
        .unwrap()
}

#[test]
fn deployment_is_hardened() {
    let d = deployment();
    let pod = d.spec.template.spec.clone().unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    let r = c.resources.clone().unwrap();
    assert!(r.requests.is_some() && r.limits.is_some());
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    // Two replicas with leader election: a standby takes over when the leader dies.
    assert_eq!(d.spec.replicas, Some(2));
    let env = c.env.clone().unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "WFE_LEADER_ELECTION" && e.value.as_deref() == Some("true")),
        "two replicas need leader election"
    );
}

fn rules() -> Vec<(String, PolicyRule)> {
    let mut out = Vec::new();
    for (_, doc) in all_docs() {
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                let r: ClusterRole = typed(&doc);
                out.extend(
                    r.rules
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| ("cluster".to_string(), p)),
                );
            }
            Some("Role") => {
                let r: Role = typed(&doc);
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                if r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("we-operator"))
                {
                    out.extend(
                        r.rules
                            .unwrap_or_default()
                            .into_iter()
                            .map(|p| (ns.clone(), p)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn rbac_is_least_privilege() {
    for (scope, rule) in rules() {
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "{scope}: wildcard verb"
        );
        assert!(
            !resources.iter().any(|r| r == "*"),
            "{scope}: wildcard resource"
        );
        if resources.iter().any(|r| r == "secrets") {
            assert_eq!(
                scope, "kubernaut-workflows",
                "Secrets only in the execution namespace"
            );
            assert_eq!(
                rule.verbs,
                ["get"],
                "Secrets: metadata reads for the pre-flight check only"
            );
        }
        assert!(
            !resources
                .iter()
                .any(|r| r == "workflowexecutions/finalizers"),
            "{scope}: the finalizer is patched on the object; the subresource is unused"
        );
        if resources.iter().any(|r| r == "customresourcedefinitions") {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["workflowexecutions.kubernaut.ai".to_string()][..]),
                "CRDs: only our own, by name"
            );
        }
        if resources.iter().any(|r| r == "leases") {
            assert_eq!(
                scope, "kubernaut-system",
                "Leases only in its own namespace"
            );
            assert_eq!(resources, ["leases"], "{scope}: a Lease rule of its own");
            match rule.resource_names.as_deref() {
                // RBAC cannot restrict a create by name (the name is in the body).
                None => assert_eq!(rule.verbs, ["create"], "Leases: only create without a name"),
                Some(names) => {
                    assert_eq!(
                        names,
                        ["we-operator-leader"],
                        "Leases: only the operator's own"
                    );
                    assert_eq!(
                        rule.verbs,
                        ["get", "patch"],
                        "Leases: what the lease library does"
                    );
                }
            }
        }
        if resources.iter().any(|r| r == "pods") {
            assert!(
                !rule.verbs.iter().any(|v| v == "create"),
                "the operator never creates Pods"
            );
        }
        if resources.iter().any(|r| r == "jobs" || r == "pipelineruns") {
            assert_eq!(
                scope, "kubernaut-workflows",
                "execution resources only in the execution namespace"
            );
        }
    }
    // Every file that holds the Role (rbac.yaml, install.yaml) says the same.
    let lease_rules: std::collections::BTreeSet<_> = rules()
        .into_iter()
        .filter(|(_, r)| r.resources.iter().flatten().any(|x| x == "leases"))
        .map(|(_, r)| (r.verbs, r.resource_names))
        .collect();
    assert_eq!(
        lease_rules.len(),
        2,
        "leader election: create, and get/patch by name"
    );
}

/// Runs kubectl against the local cluster.
fn kubectl(args: &[&str]) -> String {
    let out = wfe_testing::kubectl()
        .args(args)
        .output()
        .expect("kubectl runs (built by `cargo xtask cluster up`)");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_server_side_and_pods_are_admitted_as_restricted() {
    let client = wfe_testing::client().await;
    let dir = deploy();
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    // Namespaces first, then everything else the cluster serves types for (the ServiceMonitor
    // needs the Prometheus Operator; the samples need the production namespace).
    for f in [
        "namespaces.yaml",
        "crds/workflowexecutions.kubernaut.ai.yaml",
        "rbac.yaml",
        "workflow-policy.yaml",
        "deployment.yaml",
        "service.yaml",
        "workflow-runner.yaml",
    ] {
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &d(f)]);
    }
    let labels = kubectl(&[
        "get",
        "namespace",
        "kubernaut-workflows",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(
        labels.contains("\"pod-security.kubernetes.io/enforce\":\"restricted\""),
        "{labels}"
    );

    // The operator's pod, as the Deployment would create it, is admitted under `restricted`.
    let template = deployment().spec.template;
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("we-operator-admission-".into()),
            ..template.metadata.unwrap_or_default()
        },
        spec: template.spec,
        status: None,
    };
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };
    Api::<Pod>::namespaced(client.clone(), "kubernaut-system")
        .create(&dry, &pod)
        .await
        .expect("operator pod admitted");

    // A workflow Job's pod is admitted too, and a privileged one is refused (the check is real).
    let wfe = wfe_api::testing::wfe("admission")
        .namespace("kubernaut-system")
        .uid(Some("00000000-0000-0000-0000-000000000001"))
        .workflow("w")
        .target("production/Deployment/my-app")
        .build();
    let job = wfe_job::build_job(&wfe, &wfe_job::JobConfig::default()).unwrap();
    let t = job.spec.unwrap().template;
    let mut pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("workflow-admission-".into()),
            ..Default::default()
        },
        spec: t.spec,
        status: None,
    };
    let pods = Api::<Pod>::namespaced(client.clone(), "kubernaut-workflows");
    pods.create(&dry, &pod)
        .await
        .expect("workflow pod admitted under restricted");
    pod.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .allow_privilege_escalation = Some(true);
    let err = pods
        .create(&dry, &pod)
        .await
        .expect_err("a non-restricted pod must be refused");
    assert!(err.to_string().contains("PodSecurity"), "{err}");
}
