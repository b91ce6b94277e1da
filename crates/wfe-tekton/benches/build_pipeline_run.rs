//! Benchmark of the pure PipelineRun builder (and its serialization, which is what a create
//! sends).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wfe_api::WorkflowExecution;
use wfe_tekton::{TektonConfig, build_pipeline_run};

fn workflow_execution(parameters: usize) -> WorkflowExecution {
    let params: serde_json::Map<String, serde_json::Value> = (0..parameters)
        .map(|i| {
            (
                format!("PARAM_{i:03}"),
                serde_json::Value::String(format!("value-{i}")),
            )
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubernaut.ai/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {"name": "restart-my-app", "namespace": "team-a", "uid": "6f1c2a9e-0000-4000-8000-000000000001"},
        "spec": {
            "workflowRef": {
                "workflowId": "restart-pod", "version": "1.2.0",
                "containerImage": "oci://registry.example.com/workflows/restart:v1",
                "dependencies": {"secrets": [{"name": "db-creds"}], "configMaps": [{"name": "settings"}]}
            },
            "targetResource": "production/Deployment/my-app",
            "parameters": params,
            "executionConfig": {"timeout": "45m"},
            "remediationRequestRef": {"name": "rr-1"}
        }
    }))
    .expect("valid WorkflowExecution")
}

fn bench(c: &mut Criterion) {
    let cfg = TektonConfig::default();
    for n in [0usize, 10, 100] {
        let wfe = workflow_execution(n);
        c.bench_function(&format!("build_pipeline_run/{n}_params"), |b| {
            b.iter(|| build_pipeline_run(black_box(&wfe), black_box(&cfg)))
        });
    }
    let wfe = workflow_execution(10);
    c.bench_function("build_and_serialize/10_params", |b| {
        b.iter(|| {
            let pr = build_pipeline_run(black_box(&wfe), black_box(&cfg));
            pr.map(|pr| serde_json::to_vec(&pr).map(|v| v.len()).unwrap_or_default())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
