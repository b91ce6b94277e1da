//! A spec assembled from fuzzed strings: when it validates, both builders produce a Job and a
//! PipelineRun with valid names, labels and environment variable names, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wfe_api::WorkflowExecution;

fn pick<'a>(parts: &[&'a str], i: usize) -> &'a str {
    parts.get(i).copied().unwrap_or("")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\u{1f}').collect();
    let mut params = serde_json::Map::new();
    for pair in pick(&parts, 5).split('\u{1e}') {
        if let Some((k, v)) = pair.split_once('=') {
            params.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    let engine = if pick(&parts, 0).len() % 2 == 0 { "job" } else { "tekton" };
    let obj = serde_json::json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": pick(&parts, 1), "namespace": pick(&parts, 2), "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": {
            "executionEngine": engine,
            "workflowRef": {"workflowId": pick(&parts, 3), "version": "1",
                            "containerImage": pick(&parts, 4),
                            "dependencies": {"secrets": [{"name": pick(&parts, 7)}]}},
            "targetResource": pick(&parts, 6),
            "parameters": params,
            "executionConfig": {"timeout": pick(&parts, 8)},
            "remediationRequestRef": {"name": "rr"}
        }
    });
    let Ok(wfe) = serde_json::from_value::<WorkflowExecution>(obj) else { return };
    if wfe.spec.validate().is_err() {
        return;
    }
    let job = wfe_job::build_job(&wfe, &wfe_job::JobConfig::default()).expect("a valid spec builds a Job");
    let meta = &job.metadata;
    assert!(wfe_api::is_dns_subdomain(meta.name.as_deref().unwrap()));
    for v in meta.labels.as_ref().unwrap().values() {
        assert!(wfe_executor::is_valid_label_value(v), "{v:?}");
    }
    let pod = job.spec.unwrap().template.spec.unwrap();
    for e in pod.containers[0].env.as_ref().unwrap() {
        assert!(wfe_api::is_env_name(&e.name), "{}", e.name);
    }
    for v in pod.volumes.unwrap() {
        assert!(v.name.len() <= 63 && wfe_api::is_dns_subdomain(&v.name), "{}", v.name);
    }
    let pr = wfe_tekton::build_pipeline_run(&wfe, &wfe_tekton::TektonConfig::default());
    if let Ok(pr) = pr {
        assert!(wfe_api::is_dns_subdomain(pr.metadata.name.as_deref().unwrap()));
    }
});
