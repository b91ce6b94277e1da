//! Any bytes: deserializing a WorkflowExecution and validating it never panics, and whatever
//! parses yields a valid execution name and label values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wfe_api::{TargetResource, WorkflowExecution};

fuzz_target!(|data: &[u8]| {
    let Ok(wfe) = serde_json::from_slice::<WorkflowExecution>(data) else { return };
    let _ = wfe.spec.validate();
    let _ = wfe.spec.timeout();
    if let Ok(t) = TargetResource::parse(&wfe.spec.target_resource) {
        // Canonical keys never panic, and a key accepted has valid name parts.
        let index = wfe_api::kinds::KindIndex::new(vec![wfe_api::kinds::ServedKind {
            group: "apps".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            singular: "deployment".into(),
            short_names: vec!["deploy".into()],
            namespaced: true,
        }]);
        if t.canonical_key(&wfe.spec.target_resource, &index).is_ok() {
            assert!(t.check_names(&wfe.spec.target_resource).is_ok());
        }
    }
    let name = wfe_executor::execution_name_for(&wfe);
    assert!(name.len() == 20 && wfe_api::is_dns_subdomain(&name), "{name}");
    for value in wfe_executor::execution_labels(&wfe).values() {
        assert!(wfe_executor::is_valid_label_value(value), "{value:?}");
    }
    // Round trip: what we write back parses again.
    let json = serde_json::to_vec(&wfe).expect("serializes");
    serde_json::from_slice::<WorkflowExecution>(&json).expect("round trip");
});
