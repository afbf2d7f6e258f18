//! What decrypting a tenant's secrets costs a consumer per cache fill, with the local key-file
//! master key: unwrapping the tenant's data key, and opening each secret (AES-256-GCM, `ring`).
//! (With KMS the unwrap is a network call instead: KMS's latency, not CPU.)
//!
//! `cargo bench --bench secrets`. Results: `bench/README.md`.

#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented public functions"
)]
#![expect(clippy::unwrap_used, reason = "a bench fails by unwrapping")]

use criterion::{criterion_group, criterion_main, Criterion};
use tenant_edge::secrets::{secret_context, DataKey, MasterKey};

fn decrypt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let key = DataKey::generate().unwrap();
    let wrapped = runtime.block_on(master.wrap_key("acme", &key)).unwrap();
    let names = ["db_password", "api_key", "signing_key"];
    let sealed: Vec<_> = names
        .iter()
        .map(|n| {
            let ctx = secret_context("acme", "jira", n);
            (
                ctx.clone(),
                key.seal(&ctx, b"a-secret-of-32-bytes-or-so-12345").unwrap(),
            )
        })
        .collect();
    c.bench_function("unwrap a data key (key file)", |b| {
        b.iter(|| runtime.block_on(master.unwrap_key("acme", &wrapped)).unwrap())
    });
    c.bench_function("open one secret", |b| {
        b.iter(|| key.open(&sealed[0].0, &sealed[0].1).unwrap())
    });
    c.bench_function("a fill: unwrap, open three secrets", |b| {
        b.iter(|| {
            let key = runtime.block_on(master.unwrap_key("acme", &wrapped)).unwrap();
            sealed
                .iter()
                .map(|(ctx, s)| key.open(ctx, s).unwrap().len())
                .sum::<usize>()
        })
    });
    // What a sidecar does for a tenant's next version: its data key is kept as bytes, expanded
    // again for the opening.
    let bytes = key.bytes();
    c.bench_function("expand a kept data key", |b| b.iter(|| bytes.key().unwrap()));
    c.bench_function("a new version: expand, open three secrets", |b| {
        b.iter(|| {
            let key = bytes.key().unwrap();
            sealed
                .iter()
                .map(|(ctx, s)| key.open(ctx, s).unwrap().len())
                .sum::<usize>()
        })
    });
}

criterion_group!(benches, decrypt);
criterion_main!(benches);
