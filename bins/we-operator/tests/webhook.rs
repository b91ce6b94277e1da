//! Authenticated block clearing on the real API server: the operator serves its TLS admission
//! webhook, the API server calls it, and users act through impersonation. A user cannot clear a
//! block in someone else's name, forge the attestation, or write `status.blockClearance`.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::{as_user, free_port};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::json;
use wfe_api::{Phase, WorkflowExecution};

const REASON: &str =
    "the deployment manifest was fixed by the on-call engineer and verified in staging";

async fn grant(client: &Client, ns: &str, user: &str, resources: &[&str]) {
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let name = format!("wfe-{user}");
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["kubernaut.ai".into()]),
            resources: Some(resources.iter().map(|r| r.to_string()).collect()),
            verbs: vec!["get".into(), "patch".into(), "update".into()],
            ..Default::default()
        }]),
    };
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

async fn register_webhooks(
    client: &Client,
    ns: &str,
    port: u16,
    ca_pem: &str,
) -> Vec<(Api<DynamicObject>, String)> {
    let ca = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    };
    let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    let common = |path: &str| {
        json!({
            "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca},
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 5, "namespaceSelector": selector,
        })
    };
    let mut mutating = common("/mutate-workflowexecution");
    mutating["name"] = json!("clear-block.kubernaut.ai");
    mutating["rules"] = json!([{"apiGroups": ["kubernaut.ai"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["workflowexecutions"]}]);
    let mut validating = common("/validate-workflowexecution-status");
    validating["name"] = json!("block-clearance-status.kubernaut.ai");
    validating["rules"] = json!([{"apiGroups": ["kubernaut.ai"], "apiVersions": ["v1alpha1"], "operations": ["UPDATE"], "resources": ["workflowexecutions/status"]}]);
    let mut out = Vec::new();
    for (kind, hook) in [
        ("MutatingWebhookConfiguration", mutating),
        ("ValidatingWebhookConfiguration", validating),
    ] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let name = format!("{ns}-{}", kind.to_lowercase());
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": name}, "webhooks": [hook]
        }))
        .unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap();
        out.push((api, name));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_clear_a_block_in_someone_elses_name() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = wfe_testing::client().await;
    let ns = wfe_testing::namespace(&admin, "webhook").await;
    let exec_ns = wfe_testing::namespace(&admin, "webhook-exec").await;

    // TLS material and the attestation key.
    let dir = std::env::temp_dir().join(format!("wfe-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.join("tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("clearance.key"),
        (0..48).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();

    let port = free_port();
    let log =
        std::fs::File::create(wfe_testing::repo_root().join("target/we-operator-webhook.log"))
            .unwrap();
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_we-operator"))
        .args([
            "run",
            "--watch-namespace",
            &ns,
            "--execution-namespace",
            &exec_ns,
            "--leader-election=false",
        ])
        .args([
            "--health-address",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-address",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--webhook-address", &format!("127.0.0.1:{port}")])
        .arg("--webhook-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--webhook-key-file")
        .arg(dir.join("tls.key"))
        .arg("--clearance-key-file")
        .arg(dir.join("clearance.key"))
        .args(["--operator-username", "wfe-admin", "--log-format", "json"])
        .env("KUBECONFIG", wfe_testing::kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wfe_testing::wait_for("the webhook port", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let hooks = register_webhooks(&admin, &ns, port, &cert_pem).await;
    grant(&admin, &ns, "alice", &["workflowexecutions"]).await;
    grant(
        &admin,
        &ns,
        "mallory",
        &["workflowexecutions", "workflowexecutions/status"],
    )
    .await;

    // A failed request to clear (a tag-only Job image fails validation at once).
    let wfes: Api<WorkflowExecution> = Api::namespaced(admin.clone(), &ns);
    let w: WorkflowExecution = serde_json::from_value(json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": "blocked", "namespace": ns},
        "spec": {"executionEngine": "job",
                 "workflowRef": {"workflowId": "w", "version": "1", "containerImage": "registry.example.com/w:v1"},
                 "targetResource": "prod/Deployment/app", "remediationRequestRef": {"name": "rr"}}
    }))
    .unwrap();
    wfes.create(&PostParams::default(), &w).await.unwrap();
    wfe_testing::wait_for("the request to fail", Duration::from_secs(60), || async {
        wfes.get("blocked")
            .await
            .ok()
            .filter(|w| w.phase() == Phase::Failed)
    })
    .await;

    let alice: Api<WorkflowExecution> = Api::namespaced(as_user("alice").await, &ns);
    let mallory: Api<WorkflowExecution> = Api::namespaced(as_user("mallory").await, &ns);
    let annotate =
        |reason: &str| json!({"metadata": {"annotations": {"kubernaut.ai/clear-block": reason}}});

    // Too short: refused by the API server with the webhook's message.
    let err = alice
        .patch(
            "blocked",
            &PatchParams::default(),
            &Patch::Merge(annotate("fixed it")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 10"), "{err}");
    // A forged attestation: refused.
    let forged =
        json!({"metadata": {"annotations": {"kubernaut.ai/clear-block-attestation": "00.00"}}});
    let err = mallory
        .patch("blocked", &PatchParams::default(), &Patch::Merge(forged))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("webhook only"), "{err}");
    // Writing the clearance record directly: refused.
    let record = json!({"status": {"blockClearance": {"clearedBy": "alice", "clearReason": REASON, "clearMethod": "Annotation"}}});
    let err = mallory
        .patch_status("blocked", &PatchParams::default(), &Patch::Merge(record))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("recorded by the operator"),
        "{err}"
    );

    // Alice clears it: the webhook stamps her identity and the operator records it.
    let cleared = alice
        .patch(
            "blocked",
            &PatchParams::default(),
            &Patch::Merge(annotate(REASON)),
        )
        .await
        .unwrap();
    assert!(
        cleared
            .annotations()
            .contains_key("kubernaut.ai/clear-block-attestation")
    );
    let done = wfe_testing::wait_for(
        "the clearance to be recorded",
        Duration::from_secs(60),
        || async {
            wfes.get("blocked")
                .await
                .ok()
                .and_then(|w| w.status.and_then(|s| s.block_clearance))
        },
    )
    .await;
    assert_eq!(done.cleared_by, "alice");
    assert_eq!(done.clear_reason, REASON);

    // Mallory cannot re-attribute it: changing the reason re-stamps with her own name, and the
    // recorded clearance stays Alice's.
    let _ = mallory
        .patch(
            "blocked",
            &PatchParams::default(),
            &Patch::Merge(annotate(&format!("{REASON} again"))),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        wfes.get("blocked")
            .await
            .unwrap()
            .status
            .unwrap()
            .block_clearance
            .unwrap()
            .cleared_by,
        "alice"
    );

    for (api, name) in hooks {
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    operator.kill().await.ok();
    let _ = Path::new(&dir);
}
