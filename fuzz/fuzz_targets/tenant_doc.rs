//! The catalogue's document validation: any JSON a client may send as a tenant document is
//! parsed, validated and projected into every view without a panic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tenant_edge::catalogue::validate::tenant_problems;
use tenant_edge::feed::TenantDoc;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<TenantDoc>(data) else { return };
    let _ = tenant_problems(&doc.id, &doc, None, &BTreeMap::new());
    let _ = doc.ingress();
    let products: Vec<_> = doc.products.keys().cloned().collect();
    let _ = doc.project(&products, true);
    let _ = serde_json::to_vec(&doc);
});
