//! How long building one Job takes (it runs on every dispatch).

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use wfe_api::{WorkflowExecution, WorkflowExecutionSpec, WorkflowRef};
use wfe_job::{JobConfig, build_job};

fn wfe() -> WorkflowExecution {
    let mut w = WorkflowExecution::new(
        "restart-my-app",
        WorkflowExecutionSpec {
            execution_engine: wfe_api::ExecutionEngine::Job,
            workflow_ref: WorkflowRef {
                workflow_id: "restart-with-increased-memory".into(),
                version: "1.2.0".into(),
                container_image: format!(
                    "registry.example.com/remediation/restart:v1.2@sha256:{}",
                    "a".repeat(64)
                ),
                ..Default::default()
            },
            target_resource: "production/Deployment/my-app".into(),
            parameters: BTreeMap::from([
                ("podName".into(), "my-app".into()),
                ("namespace".into(), "production".into()),
                ("memoryLimit".into(), "1Gi".into()),
            ]),
            execution_config: None,
            remediation_request_ref: Default::default(),
            confidence: None,
            rationale: None,
        },
    );
    w.metadata.namespace = Some("kubernaut-system".into());
    w.metadata.uid = Some("0b0e2a4c-1111-2222-3333-444455556666".into());
    w
}

fn bench(c: &mut Criterion) {
    let w = wfe();
    let cfg = JobConfig::default();
    c.bench_function("build_job", |b| {
        b.iter(|| build_job(std::hint::black_box(&w), &cfg).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
