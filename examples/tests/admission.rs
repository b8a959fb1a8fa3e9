//! The admission webhook of the running `standalone` (opt-in, HTTPS): a Kubernetes
//! AdmissionReview over TLS, verified against the control plane's CA, gets Kuma's answer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::Standalone;
use kuma_testkit::free_port;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_the_admission_webhook_over_https() {
    let port = free_port().await.to_string();
    let cp = Standalone::start(&[
        ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_ENABLED", "true"),
        ("KUMA_RUNTIME_KUBERNETES_ADMISSION_SERVER_PORT", &port),
    ])
    .await;
    assert!(cp.table.contains(&format!(":{port}")), "{}", cp.table);

    let client = cp.https_client();
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "b3c1d2e4-0000-4000-8000-000000000001",
            "kind": {"group": "kuma.io", "version": "v1alpha1", "kind": "Dataplane"},
            "resource": {"group": "kuma.io", "version": "v1alpha1", "resource": "dataplanes"},
            "name": "web-1",
            "namespace": "kuma-demo",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {
                "apiVersion": "kuma.io/v1alpha1", "kind": "Dataplane", "mesh": "default",
                "metadata": {"name": "web-1", "namespace": "kuma-demo"},
                "spec": {"networking": {"address": "10.0.0.1",
                         "inbound": [{"port": 70000, "tags": {"kuma.io/service": "web"}}]}}
            },
            "dryRun": false
        }
    });
    let url = format!("https://localhost:{port}/validate-kuma-io-v1alpha1");
    let r = client
        .post(&url)
        .body(review.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "b3c1d2e4-0000-4000-8000-000000000001");
    assert_eq!(response["allowed"], false, "{answer}");
    assert_eq!(
        response["status"]["details"]["causes"][0]["field"],
        "spec.networking.inbound[0].port"
    );

    // Not an AdmissionReview: 400 with the reason.
    let r = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("apiVersion"));
    // Plain HTTP gets no answer from the TLS port.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        plain
            .post(format!("http://127.0.0.1:{port}/validate-kuma-io-v1alpha1"))
            .body(review.to_string())
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
            .eq(&false)
    );
}
