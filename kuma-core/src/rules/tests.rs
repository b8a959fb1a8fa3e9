use super::*;
use crate::resource::parse_documents;
use serde_json::json;

const MESH: &str = r#"
type: Dataplane
mesh: default
name: web-1
labels: {team: a}
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, version: v1}
  - port: 9090
    name: admin
    tags: {kuma.io/service: web-admin}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 5432
    tags: {kuma.io/service: db}
"#;

fn resources(yaml: &str) -> Vec<Resource> {
    parse_documents(yaml).expect("valid yaml")
}

fn timeout(name: &str, top: &str, to: &str) -> String {
    format!(
        "---\ntype: MeshTimeout\nmesh: default\nname: {name}\nspec:\n  targetRef: {top}\n  to:\n{to}"
    )
}

#[test]
fn to_rules_merge_in_kuma_order() {
    let dps = resources(MESH);
    let policies = resources(&[
        // More specific top-level kind: applied after the Mesh ones.
        timeout(
            "svc",
            "{kind: MeshService, name: web}",
            "  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 20s}\n",
        ),
        timeout(
            "b-mesh",
            "{kind: Mesh}",
            "  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s, idleTimeout: 1s, http: {requestTimeout: 1s}}\n  - targetRef: {kind: MeshService, name: backend}\n    default: {http: {requestTimeout: 7s}}\n",
        ),
        // Same kind, smaller name: merged last, so it wins over b-mesh.
        timeout(
            "a-mesh",
            "{kind: Mesh}",
            "  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s}\n",
        ),
        // Selects nobody here.
        timeout(
            "other",
            "{kind: MeshService, name: nobody}",
            "  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 9s}\n",
        ),
    ]
    .concat());
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &web);
    let names: Vec<_> = rules.matched.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["b-mesh", "a-mesh", "svc"]);
    assert_eq!(
        rules.to_rule("backend").unwrap().conf,
        json!({"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "7s"}})
    );
    assert_eq!(
        rules.to_rule("anything").unwrap().conf,
        json!({"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "1s"}})
    );
    let backend = rules.to_rule("backend").unwrap();
    let origin_names: Vec<_> = backend.origins.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(origin_names, ["b-mesh", "a-mesh", "svc"]);
    // The specific rule comes first.
    assert_eq!(rules.to[0].subset.get(SERVICE_TAG).unwrap(), "backend");

    let conf: crate::model::policy::TimeoutConf =
        rules.to_conf("backend").unwrap().expect("typed conf");
    assert_eq!(
        conf.http.unwrap().request_timeout.unwrap().get().as_secs(),
        7
    );

    // db-1 is selected by the Mesh policies only.
    let db = ProxyView::of(&dps[1]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &db);
    assert_eq!(
        rules.to_rule("x").unwrap().conf,
        json!({"connectionTimeout": "2s", "idleTimeout": "1s", "http": {"requestTimeout": "1s"}})
    );
    assert!(mesh.rules(ResourceType::MeshRetry, &db).is_empty());
}

#[test]
fn from_rules_are_per_inbound() {
    let dps = resources(MESH);
    let policies = resources(
        r#"
type: MeshTimeout
mesh: default
name: inbound-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 10s, http: {requestTimeout: 3s}}
---
type: MeshTimeout
mesh: default
name: inbound-admin
spec:
  targetRef: {kind: Dataplane, name: web-1, sectionName: admin}
  rules:
  - default: {http: {requestTimeout: 30s}}
---
type: MeshTimeout
mesh: default
name: by-labels
spec:
  targetRef: {kind: Dataplane, labels: {team: a}}
  from:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 4s}
---
type: MeshTimeout
mesh: default
name: v2-only
spec:
  targetRef: {kind: MeshSubset, tags: {version: v2}}
  from:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 9s}
"#,
    );
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &web);
    assert_eq!(
        rules.from_rule(8080).unwrap().conf,
        json!({"idleTimeout": "10s", "connectionTimeout": "4s", "http": {"requestTimeout": "3s"}})
    );
    assert_eq!(
        rules.from_rule(9090).unwrap().conf,
        json!({"idleTimeout": "10s", "connectionTimeout": "4s", "http": {"requestTimeout": "30s"}})
    );
    let admin = rules.from_rule(9090).unwrap();
    let names: Vec<_> = admin.origins.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["inbound-all", "by-labels", "inbound-admin"]);
    // The labels policy does not select db-1; the section policy neither.
    let db = ProxyView::of(&dps[1]).unwrap();
    assert_eq!(
        mesh.matching(ResourceType::MeshTimeout, &db),
        ["inbound-all"]
    );
    assert!(!policy_selects(&policies[3], &[], &web));
    assert!(policy_selects(&policies[1], &[], &web));
}

#[test]
fn http_routes_merge_rules_by_matches() {
    let dps = resources(MESH);
    let policies = resources(
        r#"
type: MeshHTTPRoute
mesh: default
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs: [{kind: MeshService, name: backend-v1}]
    - matches: [{headers: [{name: x-version, value: v2}]}]
      default:
        backendRefs: [{kind: MeshService, name: backend-v2}]
---
type: MeshHTTPRoute
mesh: default
name: web-only
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs: [{kind: MeshService, name: backend-v3}]
"#,
    );
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshHTTPRoute, &web);
    let conf = &rules.to_rule("backend").unwrap().conf;
    let backends: Vec<_> = conf["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["default"]["backendRefs"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["backend-v3", "backend-v2"]);
    assert!(rules.to_rule("elsewhere").is_none());
}

#[test]
fn gateway_proxy_types_and_single_defaults() {
    let dps = resources(
        r#"
type: Dataplane
mesh: default
name: gw
networking:
  address: 10.0.0.9
  gateway: {tags: {kuma.io/service: edge}}
"#,
    );
    let policies = resources(
        r#"
type: MeshTimeout
mesh: default
name: sidecars
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  to:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 1s}
---
type: MeshTimeout
mesh: default
name: gateways
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  to:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 2s}
"#,
    );
    let mesh = MeshPolicies::new(&policies);
    let gw = ProxyView::of(&dps[0]).unwrap();
    assert_eq!(mesh.matching(ResourceType::MeshTimeout, &gw), ["gateways"]);

    let traces = resources(
        r#"
type: MeshTrace
mesh: default
name: b
spec:
  default: {sampling: {overall: 10}, tags: [{name: a, literal: x}]}
---
type: MeshTrace
mesh: default
name: a
spec:
  default: {sampling: {random: 5}, tags: [{name: b, literal: y}]}
"#,
    );
    let mesh = MeshPolicies::new(&traces);
    let single = mesh.rules(ResourceType::MeshTrace, &gw).single.unwrap();
    assert_eq!(
        single.conf,
        json!({"sampling": {"overall": 10, "random": 5}, "tags": [{"name": "b", "literal": "y"}]})
    );
}

/// A MeshTimeout with `labels` and a top-level `top`, setting idleTimeout to `idle`.
fn labelled_timeout(name: &str, labels: &str, top: &str, idle: &str) -> String {
    format!(
        "---\ntype: MeshTimeout\nmesh: default\nname: {name}\nlabels: {labels}\nspec:\n  targetRef: {top}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: {idle}}}\n"
    )
}

fn order_of(policies: &str) -> (Vec<String>, Value) {
    let dps = resources(MESH);
    let policies = resources(policies);
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &web);
    let names = rules.matched.iter().map(|o| o.name.clone()).collect();
    (names, rules.to_rule("anything").unwrap().conf.clone())
}

#[test]
fn origin_ranks_global_then_unlabelled_then_zone() {
    // The names would put them the other way round: origin decides first.
    let (names, conf) = order_of(
        &[
            labelled_timeout("z-zone", "{kuma.io/origin: zone}", "{kind: Mesh}", "3s"),
            labelled_timeout("a-none", "{}", "{kind: Mesh}", "2s"),
            labelled_timeout("m-global", "{kuma.io/origin: global}", "{kind: Mesh}", "1s"),
        ]
        .concat(),
    );
    assert_eq!(names, ["m-global", "a-none", "z-zone"]);
    assert_eq!(conf, json!({"idleTimeout": "3s"}), "the zone policy wins");
}

#[test]
fn dataplane_targets_rank_labels_then_sections_then_names() {
    let (names, conf) = order_of(
        &[
            labelled_timeout(
                "a-name-section",
                "{}",
                "{kind: Dataplane, name: web-1, sectionName: admin}",
                "4s",
            ),
            labelled_timeout("b-name", "{}", "{kind: Dataplane, name: web-1}", "3s"),
            labelled_timeout(
                "c-labels-section",
                "{}",
                "{kind: Dataplane, labels: {team: a}, sectionName: admin}",
                "2s",
            ),
            labelled_timeout(
                "d-labels",
                "{}",
                "{kind: Dataplane, labels: {team: a}}",
                "1s",
            ),
        ]
        .concat(),
    );
    assert_eq!(
        names,
        ["d-labels", "c-labels-section", "b-name", "a-name-section"]
    );
    assert_eq!(conf, json!({"idleTimeout": "4s"}));
}

#[test]
fn policy_roles_rank_after_origin() {
    let (names, _) = order_of(
        &[
            labelled_timeout(
                "d-owner",
                "{kuma.io/policy-role: workload-owner}",
                "{kind: Mesh}",
                "4s",
            ),
            labelled_timeout(
                "c-consumer",
                "{kuma.io/policy-role: consumer}",
                "{kind: Mesh}",
                "3s",
            ),
            labelled_timeout(
                "b-producer",
                "{kuma.io/policy-role: producer}",
                "{kind: Mesh}",
                "2s",
            ),
            labelled_timeout("a-system", "{}", "{kind: Mesh}", "1s"),
        ]
        .concat(),
    );
    assert_eq!(names, ["a-system", "b-producer", "c-consumer", "d-owner"]);
}

#[test]
fn delegated_gateways_are_selected_by_their_gateway_tags() {
    let gateway = resources(
        "type: Dataplane\nmesh: default\nname: edge-1\nnetworking:\n  address: 10.0.0.9\n  gateway:\n    type: DELEGATED\n    tags: {kuma.io/service: edge, team: front}\n",
    );
    let policies = resources(
        &[
            labelled_timeout("by-service", "{}", "{kind: MeshService, name: edge}", "1s"),
            labelled_timeout(
                "by-subset",
                "{}",
                "{kind: MeshSubset, tags: {team: front}}",
                "2s",
            ),
            labelled_timeout(
                "by-service-subset",
                "{}",
                "{kind: MeshServiceSubset, name: edge, tags: {team: front}}",
                "3s",
            ),
            labelled_timeout(
                "other-service",
                "{}",
                "{kind: MeshService, name: web}",
                "9s",
            ),
            labelled_timeout(
                "other-subset",
                "{}",
                "{kind: MeshSubset, tags: {team: back}}",
                "9s",
            ),
        ]
        .concat(),
    );
    let mesh = MeshPolicies::new(&policies);
    let edge = ProxyView::of(&gateway[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &edge);
    let mut names: Vec<_> = rules.matched.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["by-service", "by-service-subset", "by-subset"]);
    // MeshServiceSubset is the most specific kind: its conf wins.
    assert_eq!(
        rules.to_rule("backend").unwrap().conf,
        json!({"idleTimeout": "3s"})
    );
}

#[test]
fn overlapping_from_subsets_give_one_conf_per_client() {
    let dps = resources(MESH);
    let policies = resources(
        "---\ntype: MeshFaultInjection\nmesh: default\nname: faults\nspec:\n  targetRef: {kind: MeshService, name: web}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {http: [{abort: {httpStatus: 500, percentage: 1}}]}\n  - targetRef: {kind: MeshSubset, tags: {team: a}}\n    default: {http: [{delay: {value: 1s, percentage: 2}}]}\n  - targetRef: {kind: MeshService, name: client}\n    default: {http: [{abort: {httpStatus: 503, percentage: 3}}]}\n",
    );
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshFaultInjection, &web);
    let tags = |pairs: &[(&str, &str)]| -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // A client that is both `client` and of team a: one rule, merging all three entries.
    let both = rules
        .from_rule_for(8080, &tags(&[("kuma.io/service", "client"), ("team", "a")]))
        .unwrap();
    assert_eq!(both.subset.len(), 2);
    assert_eq!(
        both.conf["http"].as_array().unwrap().len(),
        1,
        "{}",
        both.conf
    );
    assert_eq!(
        both.conf["http"][0]["abort"]["httpStatus"],
        json!(503),
        "the last entry wins where they overlap: {}",
        both.conf
    );
    // Neither: the Mesh entry alone, under negations.
    let other = rules
        .from_rule_for(8080, &tags(&[("kuma.io/service", "db"), ("team", "b")]))
        .unwrap();
    assert!(
        other.subset.is_empty() && other.negated.len() == 2,
        "{other:?}"
    );
    assert_eq!(other.conf["http"][0]["abort"]["httpStatus"], json!(500));
    assert_eq!(rules.from_rule(8080), Some(other));
}

const ROUTE: &str = r#"
type: MeshHTTPRoute
mesh: default
name: backend-routes
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /slow}}]
      default:
        backendRefs: [{kind: MeshService, name: backend}]
    - matches: [{headers: [{name: x-canary, value: "1"}]}]
      default:
        backendRefs: [{kind: MeshService, name: backend}]
"#;

#[test]
fn route_targeted_policies_apply_to_the_routes_rules_only() {
    let dps = resources(MESH);
    let policies = resources(
        &[
            ROUTE,
            &timeout(
                "per-route",
                "{kind: MeshHTTPRoute, name: backend-routes}",
                "  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 1s}}\n",
            ),
            &timeout(
                "mesh-wide",
                "{kind: Mesh}",
                "  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1h, http: {requestTimeout: 15s}}\n",
            ),
            &timeout(
                "no-such-route",
                "{kind: MeshHTTPRoute, name: missing}",
                "  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 9s}\n",
            ),
        ]
        .concat(),
    );
    let spec: &crate::model::policy::MeshHttpRouteSpec = policies[0].spec_as().unwrap();
    let rule_hashes: Vec<String> = spec.to.as_ref().unwrap()[0]
        .rules
        .iter()
        .map(|r| matches_hash(&r.matches))
        .collect();
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &web);
    // The route's policy is ordered after the Mesh one (MeshHTTPRoute is the most specific
    // kind); the policy of a missing route selects nothing.
    let names: Vec<_> = rules.matched.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["mesh-wide", "per-route"]);
    for hash in &rule_hashes {
        let rule = rules.to_rule_for_route("backend", hash).unwrap();
        assert_eq!(
            rule.conf,
            json!({"idleTimeout": "1h", "http": {"requestTimeout": "1s"}}),
            "route {hash}"
        );
        assert_eq!(rule.origins.len(), 2);
    }
    // The service's other routes (the default one) and other services keep the Mesh conf.
    let mesh_conf = json!({"idleTimeout": "1h", "http": {"requestTimeout": "15s"}});
    let default_route = crate::model::policy::default_route_name();
    assert_eq!(
        rules
            .to_rule_for_route("backend", default_route)
            .unwrap()
            .conf,
        mesh_conf
    );
    assert_eq!(rules.to_rule("backend").unwrap().conf, mesh_conf);
    assert_eq!(
        rules
            .to_rule_for_route("other", &rule_hashes[0])
            .unwrap()
            .conf,
        mesh_conf,
        "the route is for backend only"
    );
    // db is not selected by the route's targetRef: the per-route policy does not apply.
    let db = ProxyView::of(&dps[1]).unwrap();
    assert_eq!(mesh.matching(ResourceType::MeshTimeout, &db), ["mesh-wide"]);
    assert_eq!(
        mesh.rules(ResourceType::MeshTimeout, &db)
            .to_rule_for_route("backend", &rule_hashes[0])
            .unwrap()
            .conf,
        mesh_conf
    );
    let routes: Vec<&Resource> = vec![&policies[0]];
    assert!(policy_selects(&policies[1], &routes, &web));
    assert!(!policy_selects(&policies[1], &routes, &db));
    assert!(
        !policy_selects(&policies[1], &[], &web),
        "no route, no proxy"
    );
    assert!(!policy_selects(&policies[3], &routes, &web));
}

#[test]
fn to_subsets_of_several_keys_get_one_conf_per_destination() {
    let dps = resources(MESH);
    let policies = resources(&timeout(
        "subsets",
        "{kind: Mesh}",
        "  - targetRef: {kind: MeshService, name: backend}\n    default: {idleTimeout: 1s}\n  - targetRef: {kind: MeshSubset, tags: {version: v2}}\n    default: {connectionTimeout: 2s}\n",
    ));
    let mesh = MeshPolicies::new(&policies);
    let web = ProxyView::of(&dps[0]).unwrap();
    let rules = mesh.rules(ResourceType::MeshTimeout, &web);
    let covering = |pairs: &[(&str, &str)]| -> Vec<Value> {
        let element: Tags = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        rules
            .to
            .iter()
            .filter(|r| r.covers(&element))
            .map(|r| r.conf.clone())
            .collect()
    };
    // Every destination is covered by exactly one rule, which merges the entries it implies.
    assert_eq!(
        covering(&[("kuma.io/service", "backend"), ("version", "v2")]),
        [json!({"idleTimeout": "1s", "connectionTimeout": "2s"})]
    );
    assert_eq!(
        covering(&[("kuma.io/service", "backend"), ("version", "v1")]),
        [json!({"idleTimeout": "1s"})]
    );
    assert_eq!(
        covering(&[("kuma.io/service", "db"), ("version", "v2")]),
        [json!({"connectionTimeout": "2s"})]
    );
    assert_eq!(
        rules.to_rule("backend").unwrap().conf,
        json!({"idleTimeout": "1s"})
    );
}
