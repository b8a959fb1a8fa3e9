//! The admission webhook with AdmissionReview bodies as the Kubernetes API server sends them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use kuma_api::admission::answer;
use serde_json::{Value, json};

/// An AdmissionReview for `object` of `kind`, as kube-apiserver sends it.
fn review(api_version: &str, group: &str, kind: &str, operation: &str, object: Value) -> Vec<u8> {
    let name = object["metadata"]["name"].clone();
    let (old, object) = if operation == "DELETE" {
        (object, Value::Null)
    } else {
        (Value::Null, object)
    };
    json!({
        "kind": "AdmissionReview",
        "apiVersion": api_version,
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1alpha1", "kind": kind},
            "resource": {"group": group, "version": "v1alpha1", "resource": format!("{}s", kind.to_lowercase())},
            "requestKind": {"group": group, "version": "v1alpha1", "kind": kind},
            "name": name,
            "namespace": "kuma-demo",
            "operation": operation,
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
    .to_string()
    .into_bytes()
}

fn dataplane(port: u32) -> Value {
    json!({
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "Dataplane",
        "mesh": "default",
        "metadata": {"name": "web-1", "namespace": "kuma-demo", "creationTimestamp": null},
        "spec": {"networking": {"address": "10.0.0.1", "inbound": [
            {"port": port, "tags": {"kuma.io/service": "web"}}
        ]}}
    })
}

/// The response of the answer, checked to be an AdmissionReview for the same uid.
fn response(body: &[u8], api_version: &str) -> Value {
    let review = answer(body).unwrap();
    assert_eq!(review["apiVersion"], api_version);
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    response
}

/// The fields of a denial's causes.
fn fields(response: &Value) -> Vec<String> {
    response["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["reason"], "FieldValueInvalid");
            assert!(c["message"].as_str().is_some_and(|m| !m.is_empty()));
            c["field"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn valid_resources_are_allowed() {
    let v1 = "admission.k8s.io/v1";
    let r = response(
        &review(v1, "kuma.io", "Dataplane", "CREATE", dataplane(8080)),
        v1,
    );
    assert_eq!(r["allowed"], true, "{r}");
    let mesh = json!({"apiVersion": "kuma.io/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "payments"},
        "spec": {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}});
    let r = response(&review(v1, "kuma.io", "Mesh", "UPDATE", mesh), v1);
    assert_eq!(r["allowed"], true, "{r}");
    let timeout = json!({"apiVersion": "kuma.io/v1alpha1", "kind": "MeshTimeout",
        "metadata": {"name": "t", "namespace": "kuma-system", "labels": {"kuma.io/mesh": "default"}},
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "20s"}}]}});
    let r = response(&review(v1, "kuma.io", "MeshTimeout", "CREATE", timeout), v1);
    assert_eq!(r["allowed"], true, "{r}");
}

#[test]
fn invalid_resources_are_denied_with_their_field_errors() {
    let v1 = "admission.k8s.io/v1";
    let r = response(
        &review(v1, "kuma.io", "Dataplane", "CREATE", dataplane(0)),
        v1,
    );
    assert_eq!(r["allowed"], false, "{r}");
    let status = &r["status"];
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["details"]["kind"], "Dataplane");
    assert_eq!(status["details"]["name"], "web-1");
    assert_eq!(fields(&r), ["spec.networking.inbound[0].port"]);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.networking.inbound[0].port: "),
        "{status}"
    );

    // A targetRef policy: the errors are already under spec; a bad mesh label is named.
    let timeout = |mesh: &str, idle: &str| {
        json!({"apiVersion": "kuma.io/v1alpha1", "kind": "MeshTimeout",
            "metadata": {"name": "t", "labels": {"kuma.io/mesh": mesh}},
            "spec": {"targetRef": {"kind": "Mesh"},
                     "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})
    };
    for (object, field) in [
        (timeout("default", "soon"), "spec.to[0].default.idleTimeout"),
        (timeout("Not_A_Mesh", "20s"), "mesh"),
    ] {
        let r = response(&review(v1, "kuma.io", "MeshTimeout", "CREATE", object), v1);
        assert_eq!(r["allowed"], false, "{r}");
        assert_eq!(fields(&r), [field], "{r}");
    }

    // A spec cannot change the kind or the name it is judged as.
    let mut disguised = dataplane(0);
    disguised["spec"]["type"] = json!("Mesh");
    disguised["spec"]["name"] = json!("other");
    let r = response(&review(v1, "kuma.io", "Dataplane", "CREATE", disguised), v1);
    assert_eq!(r["allowed"], false, "{r}");
    let mut got = fields(&r);
    got.sort();
    assert_eq!(got, ["spec.name", "spec.type"], "{r}");

    // A field the kind does not have.
    let mut unknown = dataplane(8080);
    unknown["spec"]["networking"]["bogus"] = json!(true);
    let r = response(&review(v1, "kuma.io", "Dataplane", "CREATE", unknown), v1);
    assert_eq!(r["allowed"], false, "{r}");
    assert!(fields(&r)[0].starts_with("spec.networking"), "{r}");
}

#[test]
fn other_kinds_deletions_and_v1beta1() {
    let v1 = "admission.k8s.io/v1";
    let deployment =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
    let r = response(&review(v1, "apps", "Deployment", "CREATE", deployment), v1);
    assert_eq!(r["allowed"], true);
    let r = response(
        &review(v1, "kuma.io", "Dataplane", "DELETE", dataplane(0)),
        v1,
    );
    assert_eq!(r["allowed"], true);
    let beta = "admission.k8s.io/v1beta1";
    let r = response(
        &review(beta, "kuma.io", "Dataplane", "CREATE", dataplane(0)),
        beta,
    );
    assert_eq!(r["allowed"], false);
    // CREATE without the object: an error status, not a panic.
    let mut missing: Value =
        serde_json::from_slice(&review(v1, "kuma.io", "Dataplane", "CREATE", dataplane(1)))
            .unwrap();
    missing["request"]["object"] = Value::Null;
    let r = response(missing.to_string().as_bytes(), v1);
    assert_eq!(
        (r["allowed"].clone(), r["status"]["code"].clone()),
        (json!(false), json!(400))
    );
}

#[test]
fn what_is_not_an_admission_review_is_refused() {
    for (body, says) in [
        ("{not json".to_string(), "JSON"),
        (json!({"kind": "AdmissionReview", "apiVersion": "v9"}).to_string(), "apiVersion"),
        (json!({"kind": "Pod", "apiVersion": "admission.k8s.io/v1"}).to_string(), "kind"),
        (json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).to_string(), "request"),
        (json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}).to_string(), "uid"),
    ] {
        let err = answer(body.as_bytes()).unwrap_err();
        assert!(err.contains(says), "{body}: {err}");
    }
}
