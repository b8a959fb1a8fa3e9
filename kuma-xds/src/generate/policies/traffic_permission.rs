//! MeshTrafficPermission: an RBAC filter in front of every inbound of a mesh with mTLS.
//!
//! Sources are told apart by their certificates (there is no identity without mTLS, so the
//! policy does nothing then, as in Kuma). A source's action is that of the last `from` entry in
//! merge order whose subset it carries; each entry becomes the principal "carries the entry's
//! tags and none of the later entries' subsets", and the filter allows the principals of
//! `Allow` and `AllowWithShadowDeny` entries. With no entry at all, nothing is allowed.
//! `AllowWithShadowDeny` principals also go into shadow rules, which only count denials.
//!
//! Tags become SAN matchers: `kuma.io/service: web` matches `spiffe://<mesh>/web`, any other
//! tag `k: v` matches `kuma://k/v`. With strict SPIFFE certificates (one SAN per proxy, naming
//! its first service) the control plane resolves a subset itself: to the identities of the
//! proxies with an inbound carrying all its tags.
//!
//! The network filter `envoy.filters.network.rbac` guards TCP inbounds (a denied connection is
//! closed); on HTTP inbounds the HTTP filter `envoy.filters.http.rbac` answers 403.

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as PermissionRule;
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::policy::{PermissionAction as Action, TrafficPermissionConf};
use kuma_core::resource::ResourceType;
use kuma_core::rules::Rule;

use super::super::ResourceGenerator;
use super::super::context::{MeshContext, ProxyContext, strict_spiffe_service};
use super::super::resources::{ListenerDraft, ResourceSet, Terminal};
use super::typed;
use xds_server::envoy::{any, ordered_map};

/// The RBAC filters of MeshTrafficPermission (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct MeshTrafficPermission;

const POLICY: &str = "MeshTrafficPermission";

impl ResourceGenerator for MeshTrafficPermission {
    fn name(&self) -> &str {
        "MeshTrafficPermission"
    }

    fn apply(
        &self,
        ctx: &ProxyContext<'_>,
        rs: &mut ResourceSet,
    ) -> Result<(), crate::generate::BoxError> {
        let Some(mtls) = &ctx.mesh.mtls else {
            return Ok(());
        };
        let view = ctx.view();
        for inbound in &rs.inbounds {
            let entries = ctx.mesh.policies.from_entries(
                ResourceType::MeshTrafficPermission,
                &view,
                inbound.port,
            );
            let (rules, shadow, granted) = permission_rbac(ctx.mesh, mtls.strict_spiffe, &entries)?;
            if mtls.strict_spiffe && granted {
                // Tags resolve through other Dataplanes' endpoints.
                rs.reads_every_dataplane = true;
            }
            let Some(l) = rs.listeners.get_mut(&inbound.listener) else {
                continue;
            };
            let stat_prefix = format!("{}.", inbound.cluster.replace(':', "_"));
            guard(l, &stat_prefix, rules, shadow);
        }
        Ok(())
    }
}

/// Puts `rules` (and `shadow`) in front of what `l` serves: the HTTP RBAC filter (a denied
/// request gets 403) or the network one (a denied connection is closed).
pub(crate) fn guard(l: &mut ListenerDraft, stat_prefix: &str, rules: Rbac, shadow: Option<Rbac>) {
    match &mut l.terminal {
        Terminal::Http(http) => http.filters.insert(
            0,
            HttpFilter {
                name: "envoy.filters.http.rbac".into(),
                config_type: Some(HttpConfigType::TypedConfig(any(&HttpRbac {
                    rules: Some(rules),
                    shadow_rules: shadow,
                    ..Default::default()
                }))),
                ..Default::default()
            },
        ),
        Terminal::Tcp(_) => l.network_filters.insert(
            0,
            Filter {
                name: "envoy.filters.network.rbac".into(),
                config_type: Some(ConfigType::TypedConfig(any(&NetworkRbac {
                    stat_prefix: stat_prefix.to_string(),
                    rules: Some(rules),
                    shadow_rules: shadow,
                    ..Default::default()
                }))),
            },
        ),
    }
}

/// The RBAC rules the MeshTrafficPermission `from` entries `entries` (in merge order) make
/// for a destination in `mesh`, the shadow rules of their `AllowWithShadowDeny` ones, and
/// whether any entry grants access (under strict SPIFFE, its tags were resolved through the
/// mesh's Dataplanes).
pub(crate) fn permission_rbac(
    mesh: &MeshContext<'_>,
    strict_spiffe: bool,
    entries: &[Rule],
) -> Result<(Rbac, Option<Rbac>, bool), crate::generate::BoxError> {
    let mut allowed = Vec::new();
    let mut shadow_denied = Vec::new();
    let matcher = SourceMatcher {
        mesh,
        strict_spiffe,
    };
    for (i, entry) in entries.iter().enumerate() {
        let conf: TrafficPermissionConf = typed(ResourceType::MeshTrafficPermission, entry)?;
        let action = conf.action.unwrap_or(Action::Deny);
        if action == Action::Deny {
            continue;
        }
        let principal = matcher.last_covering(&entry.subset, &entries[i + 1..]);
        if action == Action::AllowWithShadowDeny {
            shadow_denied.push(principal.clone());
        }
        allowed.push(principal);
    }
    let granted = !allowed.is_empty();
    let rules = rbac(RbacAction::Allow, allowed);
    let shadow = (!shadow_denied.is_empty()).then(|| rbac(RbacAction::Deny, shadow_denied));
    Ok((rules, shadow, granted))
}

/// An RBAC of one policy granting or denying everything to `principals` (none: the policy is
/// left out, so an ALLOW RBAC allows nothing).
fn rbac(action: RbacAction, principals: Vec<Principal>) -> Rbac {
    let policies = (!principals.is_empty()).then(|| {
        (
            POLICY.to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(PermissionRule::Any(true)),
                }],
                principals,
                ..Default::default()
            },
        )
    });
    Rbac {
        action: action as i32,
        policies: ordered_map(policies),
        ..Default::default()
    }
}

fn principal(identifier: Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn and(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => principal(Identifier::Any(true)),
        1 => ids.remove(0),
        _ => principal(Identifier::AndIds(Set { ids })),
    }
}

fn or(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => principal(Identifier::NotId(Box::new(principal(Identifier::Any(
            true,
        ))))),
        1 => ids.remove(0),
        _ => principal(Identifier::OrIds(Set { ids })),
    }
}

fn san(uri: String) -> Principal {
    principal(Identifier::Authenticated(Authenticated {
        principal_name: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(uri)),
            ignore_case: false,
        }),
    }))
}

/// Turns tag subsets into principals.
struct SourceMatcher<'c, 'a> {
    mesh: &'c MeshContext<'a>,
    strict_spiffe: bool,
}

impl SourceMatcher<'_, '_> {
    /// A source carrying `subset` and none of the subsets of `later`.
    fn last_covering(&self, subset: &Tags, later: &[Rule]) -> Principal {
        // The empty subset is anyone: only the exclusions remain.
        let mut ids = Vec::new();
        if !subset.is_empty() {
            ids.push(self.carries(subset));
        }
        for r in later {
            ids.push(principal(Identifier::NotId(Box::new(
                self.carries(&r.subset),
            ))));
        }
        and(ids)
    }

    /// A source carrying every tag of `subset` (the empty subset: anyone).
    fn carries(&self, subset: &Tags) -> Principal {
        if subset.is_empty() {
            return principal(Identifier::Any(true));
        }
        let mesh = self.mesh.mesh;
        let spiffe = |service: &str| san(format!("spiffe://{mesh}/{service}"));
        if !self.strict_spiffe {
            let ids = subset
                .iter()
                .map(|(k, v)| {
                    if k == SERVICE_TAG {
                        spiffe(v)
                    } else {
                        san(format!("kuma://{k}/{v}"))
                    }
                })
                .collect();
            return and(ids);
        }
        // Only the proxy's identity (its first service) is in the certificate: the identities
        // of the proxies with an inbound carrying every tag of the subset stand for it.
        let identities: std::collections::BTreeSet<&str> = self
            .mesh
            .dataplanes()
            .filter_map(|r| r.spec_as::<DataplaneSpec>())
            .filter(|dp| {
                dp.inbounds()
                    .iter()
                    .any(|i| subset.iter().all(|(k, v)| i.tags.get(k) == Some(v)))
            })
            .filter_map(strict_spiffe_service)
            .collect();
        or(identities.into_iter().map(spiffe).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::generate::{
        GeneratorList, MeshContext, MeshMtls, ProxyMetadata, SnapshotGenerator, WorkloadCertificate,
    };
    use kuma_core::resource::{Resource, parse_yaml};
    use prost::Message as _;

    fn dp(name: &str, service: &str, version: &str) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http, version: {version}}}\n"
        ))
        .unwrap()
    }

    /// The RBAC rules on the backend proxy's inbound, and the snapshot's dependencies.
    fn backend_rbac(strict_spiffe: bool, policies: &[Resource]) -> (Rbac, Dependencies) {
        let all = vec![
            dp("backend-1", "backend", "v1"),
            dp("web-1", "web", "v1"),
            dp("web-2", "web", "v2"),
            dp("admin-1", "admin", "v2"),
        ];
        let mesh = MeshContext::new("default", &all)
            .with_policies(policies)
            .with_mtls(MeshMtls {
                permissive: false,
                ca_pem: "ca".into(),
                strict_spiffe,
                sds_cluster: None,
            });
        let cert = WorkloadCertificate {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        let ctx = ProxyContext::new(&mesh, &all[0], ProxyMetadata::default())
            .unwrap()
            .with_identity(&cert);
        let generators = GeneratorList::kuma_profile();
        let (_, dependencies) = generators.generate_tracked(&ctx).unwrap();
        let mut rs = generators.build(&ctx).unwrap();
        let listener = rs.listeners.remove("inbound:127.0.0.1:8080").unwrap();
        let Terminal::Http(http) = listener.terminal else {
            panic!("an HTTP inbound")
        };
        let Some(HttpConfigType::TypedConfig(any)) = &http.filters[0].config_type else {
            panic!("RBAC comes first")
        };
        let rbac = HttpRbac::decode(any.value.as_slice()).unwrap();
        (rbac.rules.unwrap(), dependencies)
    }

    use crate::generate::Dependencies;

    #[test]
    fn no_permission_allows_nothing() {
        let (rules, _) = backend_rbac(false, &[]);
        assert_eq!(rules.action, RbacAction::Allow as i32);
        assert!(rules.policies.is_empty());
    }

    #[test]
    fn tags_match_kuma_sans_or_resolve_to_services_in_strict_spiffe() {
        let mtp = parse_yaml(
            "type: MeshTrafficPermission\nmesh: default\nname: v1-only\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {version: v1}}\n    default: {action: Allow}\n",
        )
        .unwrap();
        let (rules, dependencies) = backend_rbac(false, std::slice::from_ref(&mtp));
        let text = format!("{rules:?}");
        assert!(text.contains("kuma://version/v1"), "{text}");
        assert!(!text.contains("spiffe://"), "{text}");
        assert!(matches!(dependencies, Dependencies::Outbounds { .. }));

        // Strict SPIFFE: the services with a v1 endpoint (web and backend), not admin.
        let (rules, dependencies) = backend_rbac(true, &[mtp]);
        let text = format!("{rules:?}");
        assert!(text.contains("\"spiffe://default/web\""), "{text}");
        assert!(text.contains("\"spiffe://default/backend\""), "{text}");
        assert!(!text.contains("spiffe://default/admin"), "{text}");
        assert!(!text.contains("kuma://"), "{text}");
        assert_eq!(dependencies, Dependencies::Everything);
    }
}
