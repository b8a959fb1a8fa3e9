//! Automatic reachable services (Kuma's `experimental.autoReachableServices`,
//! `KUMA_EXPERIMENTAL_AUTO_REACHABLE_SERVICES`): under mesh mTLS, a transparent proxy that lists
//! no `reachableServices` gets outbounds only for the services whose MeshTrafficPermissions can
//! admit it, instead of one per service of the mesh.
//!
//! As Kuma's graph does, each service is matched as one proxy carrying only the tags every
//! instance shares ([`SERVICE_MATCH_TAGS`]): top-level `MeshSubset` and `MeshServiceSubset`
//! targets are narrowed to those tags (which can only widen what they select), and policies
//! targeting `Dataplane`s, which no tag describes, are left out. A source may reach a service
//! when one of its inbounds' tag sets gets `Allow` or `AllowWithShadowDeny` from the last `from`
//! entry covering it, the decision the service's RBAC filter makes; a service no policy protects
//! admits nobody. Unlike Kuma, which also trims meshes without mTLS, where no permission is
//! enforced, the graph applies only under mTLS: there it trims exactly what would be refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::policy::{PermissionAction, TargetRefKind, TrafficPermissionConf};
use kuma_core::resource::{Labels, Resource, ResourceType, Spec};
use kuma_core::rules::{MeshPolicies, ProxyView, Rule};

use super::context::stand_in_dataplane;
use super::external::ExternalServices;
use super::index::MeshIndex;

/// The tags a service is matched by: those every instance of a service carries alike.
pub const SERVICE_MATCH_TAGS: [&str; 4] = [
    "k8s.kuma.io/namespace",
    "k8s.kuma.io/service-name",
    "k8s.kuma.io/service-port",
    SERVICE_TAG,
];

/// The port of the stand-in inbound each service is matched as.
const PORT: u32 = 1234;

/// The MeshTrafficPermission `from` entries of `engine` protecting a destination with `tags`,
/// in merge order: the engine matches policies against proxies, so the destination stands as
/// a proxy with one inbound carrying its tags.
pub(crate) fn permission_entries(engine: &MeshPolicies, tags: &Tags) -> Vec<Rule> {
    let spec = stand_in_dataplane("1.1.1.1", PORT, tags);
    let labels = Labels::default();
    let view = ProxyView {
        name: "",
        labels: &labels,
        spec: &spec,
    };
    engine.from_entries(ResourceType::MeshTrafficPermission, &view, PORT)
}

/// Which services which sources may reach, for one mesh.
#[derive(Debug, Default)]
pub struct ReachGraph {
    /// Per service, what protects it.
    entries: BTreeMap<String, Protection>,
    /// Reachable services by source tag sets, as computed for the first proxy with them.
    memo: Mutex<HashMap<Vec<Tags>, Arc<[String]>>>,
}

impl ReachGraph {
    /// The graph of the services `index` knows under `policies` (every policy of the mesh;
    /// only MeshTrafficPermissions are read).
    pub fn new<'a>(index: &MeshIndex, policies: impl IntoIterator<Item = &'a Resource>) -> Self {
        let narrowed: Vec<Resource> = policies
            .into_iter()
            .filter_map(narrowed_permission)
            .collect();
        let engine = MeshPolicies::new(&narrowed);
        let entries = index
            .service_tags()
            .map(|(service, tags)| {
                let entries = permission_entries(&engine, tags);
                (service.to_string(), Protection::of(entries))
            })
            .collect();
        ReachGraph {
            entries,
            memo: Mutex::default(),
        }
    }

    /// Adds the mesh's external services, each protected as the zone egress protects it (by
    /// the policies selecting its tags).
    pub fn with_external_services(
        mut self,
        external: &ExternalServices,
        policies: &MeshPolicies,
    ) -> Self {
        for (service, endpoints) in external.iter() {
            if self.entries.contains_key(service) {
                continue; // a mesh service of that name wins
            }
            let mut tags = endpoints
                .first()
                .map(|e| e.tags.clone())
                .unwrap_or_default();
            tags.insert(SERVICE_TAG.to_string(), service.to_string());
            let entries = permission_entries(policies, &tags);
            self.entries
                .insert(service.to_string(), Protection::of(entries));
        }
        self
    }

    /// Whether a source whose inbounds carry `sources` may reach `service`.
    pub fn can_reach(&self, sources: &[Tags], service: &str) -> bool {
        let Some(protection) = self.entries.get(service) else {
            return false;
        };
        sources.iter().any(|tags| protection.admits(tags))
    }

    /// Those of `services` a source carrying `sources` may reach, in their order; computed
    /// once per distinct `sources` (the first `services` given for them are the answer).
    pub fn reachable<'s>(
        &self,
        sources: &[Tags],
        services: impl Iterator<Item = &'s str>,
    ) -> Arc<[String]> {
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = memo.get(sources) {
            return known.clone();
        }
        let reachable: Arc<[String]> = services
            .filter(|s| self.can_reach(sources, s))
            .map(str::to_string)
            .collect();
        memo.insert(sources.to_vec(), reachable.clone());
        reachable
    }
}

/// The `from` entries protecting one service, arranged for quick decisions: a proxy's
/// reachable set asks every service of the mesh.
#[derive(Debug)]
enum Protection {
    /// Every entry covers everyone or names one service (the usual permissions): the decision
    /// for a source of service `s` is `by_service[s]`, for any other `others`.
    ByService {
        by_service: HashMap<String, bool>,
        others: bool,
    },
    /// Entries on other tags, in merge order: the last one covering a source decides.
    Entries(Vec<Rule>),
}

impl Protection {
    fn of(entries: Vec<Rule>) -> Self {
        let by_service_only = entries.iter().all(|e| {
            e.negated.is_empty()
                && (e.subset.is_empty()
                    || (e.subset.len() == 1 && e.subset.contains_key(SERVICE_TAG)))
        });
        if !by_service_only {
            return Protection::Entries(entries);
        }
        let mut by_service: HashMap<String, bool> = HashMap::new();
        let mut others = false;
        for e in &entries {
            let decision = allows(e);
            match e.subset.get(SERVICE_TAG) {
                Some(service) => {
                    by_service.insert(service.clone(), decision);
                }
                // A later entry covering everyone decides for the services named before.
                None => {
                    others = decision;
                    by_service.values_mut().for_each(|d| *d = decision);
                }
            }
        }
        Protection::ByService { by_service, others }
    }

    /// Whether a source carrying `tags` gets in.
    fn admits(&self, tags: &Tags) -> bool {
        match self {
            Protection::ByService { by_service, others } => tags
                .get(SERVICE_TAG)
                .and_then(|s| by_service.get(s))
                .copied()
                .unwrap_or(*others),
            Protection::Entries(entries) => entries
                .iter()
                .rev()
                .find(|e| e.covers(tags))
                .is_some_and(allows),
        }
    }
}

/// Whether a `from` entry lets traffic in.
fn allows(entry: &Rule) -> bool {
    entry
        .conf_as::<TrafficPermissionConf>()
        .ok()
        .and_then(|c| c.action)
        .is_some_and(|a| {
            matches!(
                a,
                PermissionAction::Allow | PermissionAction::AllowWithShadowDeny
            )
        })
}

/// `policy` as the graph matches it: a MeshTrafficPermission whose top-level subset keeps only
/// [`SERVICE_MATCH_TAGS`]; `None` for other types and for policies targeting Dataplanes.
fn narrowed_permission(policy: &Resource) -> Option<Resource> {
    let Spec::MeshTrafficPermission(spec) = &policy.spec else {
        return None;
    };
    let mut spec = spec.clone();
    if let Some(target) = &mut spec.target_ref {
        if target.kind == TargetRefKind::Dataplane {
            return None;
        }
        if let Some(tags) = &mut target.tags {
            tags.retain(|k, _| SERVICE_MATCH_TAGS.contains(&k.as_str()));
        }
    }
    Some(Resource {
        meta: policy.meta.clone(),
        spec: Spec::MeshTrafficPermission(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuma_core::resource::parse_yaml;

    fn dataplane(name: &str, service: &str, extra: &str) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: {service}{extra}}}\n"
        ))
        .unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn permissions_decide_who_reaches_what() {
        let dps = [
            dataplane("backend-1", "backend", ", version: v1"),
            dataplane("db-1", "db", ""),
            dataplane("open-1", "open", ""),
            dataplane("closed-1", "closed", ""),
            dataplane("shadow-1", "shadow", ""),
            dataplane("late-1", "late", ""),
        ];
        let policies = [
            // backend admits web only.
            "type: MeshTrafficPermission\nmesh: default\nname: backend\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
            // db admits everyone but web (the later, more specific entry wins).
            "type: MeshTrafficPermission\nmesh: default\nname: db\nspec:\n  targetRef: {kind: MeshService, name: db}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n",
            // A subset on a tag instances need not share counts as the whole service.
            "type: MeshTrafficPermission\nmesh: default\nname: open\nspec:\n  targetRef: {kind: MeshServiceSubset, name: open, tags: {version: v9}}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
            "type: MeshTrafficPermission\nmesh: default\nname: shadow\nspec:\n  targetRef: {kind: MeshService, name: shadow}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {team: a}}\n    default: {action: AllowWithShadowDeny}\n",
            // A later entry covering everyone overrides an earlier one naming web.
            "type: MeshTrafficPermission\nmesh: default\nname: late\nspec:\n  targetRef: {kind: MeshService, name: late}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
            // Dataplane-targeted permissions are not part of the graph.
            "type: MeshTrafficPermission\nmesh: default\nname: by-name\nspec:\n  targetRef: {kind: Dataplane, name: closed-1}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
        ]
        .map(|p| parse_yaml(p).unwrap());
        let graph = ReachGraph::new(&MeshIndex::new(dps), &policies);
        let web = [tags(&[("kuma.io/service", "web")])];
        let other = [tags(&[("kuma.io/service", "other"), ("team", "a")])];
        assert!(graph.can_reach(&web, "backend"));
        assert!(!graph.can_reach(&other, "backend"));
        assert!(!graph.can_reach(&web, "db"));
        assert!(graph.can_reach(&other, "db"));
        assert!(graph.can_reach(&web, "open") && graph.can_reach(&other, "open"));
        assert!(
            !graph.can_reach(&web, "closed"),
            "no permission admits nobody"
        );
        assert!(!graph.can_reach(&web, "shadow"));
        assert!(graph.can_reach(&other, "shadow"));
        assert!(!graph.can_reach(&web, "unknown"));
        assert!(graph.can_reach(&web, "late") && graph.can_reach(&other, "late"));
        // Any inbound of the source will do.
        let both = [web[0].clone(), other[0].clone()];
        assert!(graph.can_reach(&both, "backend") && graph.can_reach(&both, "db"));

        let services = ["backend", "closed", "db", "late", "open", "shadow"];
        let reachable = graph.reachable(&web, services.iter().copied());
        assert_eq!(&reachable[..], ["backend", "late", "open"]);
        // Computed once per source: the memo answers the same.
        assert!(Arc::ptr_eq(
            &reachable,
            &graph.reachable(&web, services.iter().copied())
        ));
    }

    #[test]
    fn external_services_are_reached_as_their_permissions_say() {
        use super::super::external::ExternalEndpoint;
        let external = ExternalServices::from_endpoints(["httpbin", "api"].map(|service| {
            (
                service.to_string(),
                ExternalEndpoint {
                    name: service.to_string(),
                    host: "203.0.113.5".into(),
                    port: 80,
                    tags: tags(&[("kuma.io/service", service), ("kuma.io/protocol", "http")]),
                    tls: None,
                },
            )
        }));
        let policies = [
            "type: MeshTrafficPermission\nmesh: default\nname: all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
            "type: MeshTrafficPermission\nmesh: default\nname: no-web\nspec:\n  targetRef: {kind: MeshService, name: httpbin}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n",
        ]
        .map(|p| parse_yaml(p).unwrap());
        let graph = ReachGraph::new(&MeshIndex::default(), &policies)
            .with_external_services(&external, &MeshPolicies::new(&policies));
        let web = [tags(&[("kuma.io/service", "web")])];
        let other = [tags(&[("kuma.io/service", "other")])];
        assert!(!graph.can_reach(&web, "httpbin"));
        assert!(graph.can_reach(&other, "httpbin"));
        assert!(graph.can_reach(&web, "api"));
    }
}
