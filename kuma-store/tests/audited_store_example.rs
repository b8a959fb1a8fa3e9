//! The `audited_store` example passes the store conformance suite and audits every write.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/audited_store.rs"]
mod audited_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audited_store_example_conforms() {
    let audited = audited_store::conformance().await;
    assert!(audited > 100, "the suite's writes were audited: {audited}");
}
