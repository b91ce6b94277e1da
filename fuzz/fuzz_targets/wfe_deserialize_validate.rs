//! Any bytes: deserializing a WorkflowExecution and validating it never panics, and whatever
//! parses yields a valid execution name and label values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wfe_api::{TargetResource, WorkflowExecution};

fuzz_target!(|data: &[u8]| {
    let Ok(wfe) = serde_json::from_slice::<WorkflowExecution>(data) else { return };
    let _ = wfe.spec.validate();
    let _ = wfe.spec.timeout();
    let _ = TargetResource::parse(&wfe.spec.target_resource);
    let name = wfe_executor::execution_name_for(&wfe);
    assert!(name.len() == 20 && wfe_api::is_dns_subdomain(&name), "{name}");
    for value in wfe_executor::execution_labels(&wfe).values() {
        assert!(wfe_executor::is_valid_label_value(value), "{value:?}");
    }
    // Round trip: what we write back parses again.
    let json = serde_json::to_vec(&wfe).expect("serializes");
    serde_json::from_slice::<WorkflowExecution>(&json).expect("round trip");
});
