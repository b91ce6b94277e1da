//! The operator refuses to start with a workflow policy it cannot parse: running unrestricted by
//! mistake would be worse than not running (issue #18).

use std::process::Command;

#[test]
fn an_invalid_workflow_policy_stops_the_operator_before_it_starts() {
    let dir = std::env::temp_dir().join(format!("wfe-policy-flag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, says) in [
        (
            "typo.yaml",
            "default: {imagez: [\"registry.example.com/team/\"]}",
            "unknown field `imagez`",
        ),
        (
            "registry-only.yaml",
            "default: {images: [\"registry.example.com\"]}",
            "image entry \"registry.example.com\"",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_we-operator"))
            .args(["run", "--log-format", "plain", "--workflow-policy-file"])
            .arg(&path)
            // No cluster is needed to refuse it: the policy is read first.
            .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("invalid workflow policy") && stderr.contains(says),
            "{name}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
