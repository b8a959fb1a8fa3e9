//! The resource-type registry and the [`Spec`] enum, generated from one table.

use std::fmt;

use serde_json::Value;

use crate::model::dataplane::DataplaneSpec;
use crate::model::gateway::MeshGatewaySpec;
use crate::model::mesh::MeshSpec;
use crate::model::policy::*;
use crate::model::system::{ConfigSpec, SecretSpec};
use crate::model::zone::{ZoneEgressSpec, ZoneIngressSpec, ZoneSpec};
use crate::validation::{Path, ValidationError};

/// A spec kept as a JSON object: for types this crate does not model field by field yet.
pub type UntypedSpec = serde_json::Map<String, Value>;

/// A spec kept as JSON text (an object): for types written often and read seldom, such as
/// the one `DataplaneInsight` per proxy, whose text is several times smaller than its JSON
/// tree. It reads and writes as the object it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactSpec(Box<str>);

impl CompactSpec {
    /// The spec of `object`.
    pub fn new(object: &UntypedSpec) -> Self {
        // A map of JSON values always serializes.
        let text = serde_json::to_string(object).unwrap_or_else(|_| "{}".to_string());
        CompactSpec(text.into_boxed_str())
    }

    /// The object, decoded.
    pub fn to_object(&self) -> UntypedSpec {
        // Only `new` and deserialization make one, from an object: the text always decodes.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The object as JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CompactSpec {
    fn default() -> Self {
        CompactSpec("{}".into())
    }
}

impl From<UntypedSpec> for CompactSpec {
    fn from(object: UntypedSpec) -> Self {
        CompactSpec::new(&object)
    }
}

impl fmt::Debug for CompactSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for CompactSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_object().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for CompactSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        UntypedSpec::deserialize(deserializer).map(|object| CompactSpec::new(&object))
    }
}

impl CheckSpec for CompactSpec {
    fn check(&self) -> ValidationError {
        ValidationError::new()
    }
}

/// Where a type lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One per control plane (`/zones/{name}`).
    Global,
    /// Inside a mesh (`/meshes/{mesh}/...`).
    Mesh,
}

/// A spec type that knows how to check itself.
trait CheckSpec {
    fn check(&self) -> ValidationError;
}

macro_rules! checks {
    ($($t:ty),* $(,)?) => { $(impl CheckSpec for $t { fn check(&self) -> ValidationError { self.validate() } })* };
}

checks!(
    MeshSpec,
    DataplaneSpec,
    ZoneIngressSpec,
    ZoneEgressSpec,
    SecretSpec,
    MeshGatewaySpec,
    MeshTrafficPermissionSpec,
    MeshTimeoutSpec,
    MeshRetrySpec,
    MeshHealthCheckSpec,
    MeshCircuitBreakerSpec,
    MeshLoadBalancingStrategySpec,
    MeshHttpRouteSpec,
    MeshTcpRouteSpec,
    MeshRateLimitSpec,
    MeshFaultInjectionSpec,
    MeshAccessLogSpec,
);

impl CheckSpec for ZoneSpec {
    fn check(&self) -> ValidationError {
        ValidationError::new()
    }
}

impl CheckSpec for ConfigSpec {
    fn check(&self) -> ValidationError {
        ValidationError::new()
    }
}

impl CheckSpec for UntypedSpec {
    fn check(&self) -> ValidationError {
        // Untyped policies still follow the envelope: a targetRef, when present, must be one.
        let mut err = ValidationError::new();
        if let Some(t) = self.get("targetRef")
            && let Err(e) = super::decode_value::<TargetRef>(t.clone())
        {
            err.extend_at(&Path::at("spec").field("targetRef"), e);
        }
        err
    }
}

/// A spec type with its own resource type: lets callers write `resource.spec_as::<MeshSpec>()`.
pub trait TypedSpec: Sized {
    /// The spec of `spec` when it is of this type.
    fn from_spec(spec: &Spec) -> Option<&Self>;
}

macro_rules! registry {
    ($(
        $variant:ident($spec:ty) = $name:literal, $scope:ident, $coll:expr,
        to_zone: $tz:literal, to_global: $tg:literal, policy: $pol:literal;
    )*) => {
        /// Every resource type this control plane knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ResourceType {
            $(
                #[doc = concat!("`", $name, "`.")]
                $variant,
            )*
        }

        impl ResourceType {
            /// All types, in registry order.
            pub const ALL: &'static [ResourceType] = &[$(ResourceType::$variant),*];

            /// The type's name as written in `type:` (e.g. `MeshTrafficPermission`).
            pub fn name(self) -> &'static str {
                match self { $(ResourceType::$variant => $name),* }
            }

            /// Global- or mesh-scoped.
            pub fn scope(self) -> Scope {
                match self { $(ResourceType::$variant => Scope::$scope),* }
            }

            /// The REST collection (`meshes`, `dataplanes`, `meshtimeouts`...); `None` when the
            /// type is internal.
            pub fn collection(self) -> Option<&'static str> {
                match self { $(ResourceType::$variant => $coll),* }
            }

            /// KDS syncs the type from global to zones.
            pub fn kds_to_zone(self) -> bool {
                match self { $(ResourceType::$variant => $tz),* }
            }

            /// KDS syncs the type from zones to global.
            pub fn kds_to_global(self) -> bool {
                match self { $(ResourceType::$variant => $tg),* }
            }

            /// A targetRef policy (YAML with a nested `spec`).
            pub fn is_policy(self) -> bool {
                match self { $(ResourceType::$variant => $pol),* }
            }

            /// The type with this `type:` name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(ResourceType::$variant),)* _ => None }
            }

            /// An empty spec of this type (every field unset; may not pass validation).
            pub fn empty_spec(self) -> Spec {
                match self { $(ResourceType::$variant => Spec::$variant(Default::default())),* }
            }

            /// The type served under this REST collection (or Kuma's alternative path:
            /// `global-secrets` for `globalsecrets`, `zone-ingresses` for `zoneingresses`).
            pub fn from_collection(collection: &str) -> Option<Self> {
                match collection {
                    "global-secrets" => return Some(ResourceType::GlobalSecret),
                    "zone-ingresses" => return Some(ResourceType::ZoneIngress),
                    _ => {}
                }
                Self::ALL.iter().copied().find(|t| t.collection() == Some(collection))
            }
        }

        /// The spec of a resource; the variant names the type.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Spec {
            $(
                #[doc = concat!("Spec of a `", $name, "`.")]
                $variant($spec),
            )*
        }

        impl Spec {
            /// The type this spec belongs to.
            pub fn rtype(&self) -> ResourceType {
                match self { $(Spec::$variant(_) => ResourceType::$variant),* }
            }

            /// Checks the spec; paths of policy specs start with `spec.`.
            pub fn validate(&self) -> ValidationError {
                match self { $(Spec::$variant(s) => CheckSpec::check(s)),* }
            }

            /// The spec as a JSON value (an object).
            pub fn to_value(&self) -> Value {
                let v = match self { $(Spec::$variant(s) => serde_json::to_value(s)),* };
                // Specs are plain data (string-keyed maps, no non-finite floats): serializing cannot fail.
                v.unwrap_or_else(|_| Value::Object(Default::default()))
            }

            /// Decodes a spec of type `rtype` from JSON, reporting field paths on failure.
            pub fn from_value(rtype: ResourceType, value: Value) -> Result<Spec, ValidationError> {
                Ok(match rtype { $(ResourceType::$variant => Spec::$variant(super::decode_value(value)?)),* })
            }

        }
    };
}

registry! {
    Mesh(MeshSpec) = "Mesh", Global, Some("meshes"), to_zone: true, to_global: false, policy: false;
    Dataplane(DataplaneSpec) = "Dataplane", Mesh, Some("dataplanes"), to_zone: false, to_global: true, policy: false;
    DataplaneInsight(CompactSpec) = "DataplaneInsight", Mesh, Some("dataplane-insights"), to_zone: false, to_global: true, policy: false;
    ZoneIngress(ZoneIngressSpec) = "ZoneIngress", Global, Some("zoneingresses"), to_zone: true, to_global: true, policy: false;
    ZoneEgress(ZoneEgressSpec) = "ZoneEgress", Global, Some("zoneegresses"), to_zone: false, to_global: true, policy: false;
    Zone(ZoneSpec) = "Zone", Global, Some("zones"), to_zone: false, to_global: false, policy: false;
    ZoneInsight(UntypedSpec) = "ZoneInsight", Global, Some("zone-insights"), to_zone: false, to_global: false, policy: false;
    Secret(SecretSpec) = "Secret", Mesh, Some("secrets"), to_zone: true, to_global: false, policy: false;
    GlobalSecret(SecretSpec) = "GlobalSecret", Global, Some("globalsecrets"), to_zone: true, to_global: false, policy: false;
    Config(ConfigSpec) = "Config", Global, None, to_zone: false, to_global: false, policy: false;
    MeshGateway(MeshGatewaySpec) = "MeshGateway", Mesh, Some("meshgateways"), to_zone: true, to_global: false, policy: false;
    MeshTrafficPermission(MeshTrafficPermissionSpec) = "MeshTrafficPermission", Mesh, Some("meshtrafficpermissions"), to_zone: true, to_global: true, policy: true;
    MeshTimeout(MeshTimeoutSpec) = "MeshTimeout", Mesh, Some("meshtimeouts"), to_zone: true, to_global: true, policy: true;
    MeshRetry(MeshRetrySpec) = "MeshRetry", Mesh, Some("meshretries"), to_zone: true, to_global: true, policy: true;
    MeshHealthCheck(MeshHealthCheckSpec) = "MeshHealthCheck", Mesh, Some("meshhealthchecks"), to_zone: true, to_global: true, policy: true;
    MeshCircuitBreaker(MeshCircuitBreakerSpec) = "MeshCircuitBreaker", Mesh, Some("meshcircuitbreakers"), to_zone: true, to_global: true, policy: true;
    MeshLoadBalancingStrategy(MeshLoadBalancingStrategySpec) = "MeshLoadBalancingStrategy", Mesh, Some("meshloadbalancingstrategies"), to_zone: true, to_global: true, policy: true;
    MeshHTTPRoute(MeshHttpRouteSpec) = "MeshHTTPRoute", Mesh, Some("meshhttproutes"), to_zone: true, to_global: true, policy: true;
    MeshTCPRoute(MeshTcpRouteSpec) = "MeshTCPRoute", Mesh, Some("meshtcproutes"), to_zone: true, to_global: true, policy: true;
    MeshRateLimit(MeshRateLimitSpec) = "MeshRateLimit", Mesh, Some("meshratelimits"), to_zone: true, to_global: true, policy: true;
    MeshFaultInjection(MeshFaultInjectionSpec) = "MeshFaultInjection", Mesh, Some("meshfaultinjections"), to_zone: true, to_global: true, policy: true;
    MeshAccessLog(MeshAccessLogSpec) = "MeshAccessLog", Mesh, Some("meshaccesslogs"), to_zone: true, to_global: true, policy: true;
    MeshTrace(UntypedSpec) = "MeshTrace", Mesh, Some("meshtraces"), to_zone: true, to_global: true, policy: true;
    MeshMetric(UntypedSpec) = "MeshMetric", Mesh, Some("meshmetrics"), to_zone: true, to_global: true, policy: true;
    MeshProxyPatch(UntypedSpec) = "MeshProxyPatch", Mesh, Some("meshproxypatches"), to_zone: true, to_global: true, policy: true;
    MeshPassthrough(UntypedSpec) = "MeshPassthrough", Mesh, Some("meshpassthroughs"), to_zone: true, to_global: true, policy: true;
    MeshTLS(UntypedSpec) = "MeshTLS", Mesh, Some("meshtlses"), to_zone: true, to_global: true, policy: true;
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! typed {
    ($($variant:ident($spec:ty)),* $(,)?) => {
        $(
            impl TypedSpec for $spec {
                fn from_spec(spec: &Spec) -> Option<&Self> {
                    match spec { Spec::$variant(s) => Some(s), _ => None }
                }
            }
            impl From<$spec> for Spec {
                fn from(s: $spec) -> Spec { Spec::$variant(s) }
            }
        )*
    };
}

typed!(
    Mesh(MeshSpec),
    Dataplane(DataplaneSpec),
    ZoneIngress(ZoneIngressSpec),
    ZoneEgress(ZoneEgressSpec),
    Zone(ZoneSpec),
    Config(ConfigSpec),
    MeshGateway(MeshGatewaySpec),
    MeshTrafficPermission(MeshTrafficPermissionSpec),
    MeshTimeout(MeshTimeoutSpec),
    MeshRetry(MeshRetrySpec),
    MeshHealthCheck(MeshHealthCheckSpec),
    MeshCircuitBreaker(MeshCircuitBreakerSpec),
    MeshLoadBalancingStrategy(MeshLoadBalancingStrategySpec),
    MeshHTTPRoute(MeshHttpRouteSpec),
    MeshTCPRoute(MeshTcpRouteSpec),
    MeshRateLimit(MeshRateLimitSpec),
    MeshFaultInjection(MeshFaultInjectionSpec),
    MeshAccessLog(MeshAccessLogSpec),
);

impl TypedSpec for SecretSpec {
    fn from_spec(spec: &Spec) -> Option<&Self> {
        match spec {
            Spec::Secret(s) | Spec::GlobalSecret(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_name(t.name()), Some(*t));
            if let Some(c) = t.collection() {
                assert_eq!(ResourceType::from_collection(c), Some(*t), "{c}");
            }
            if t.is_policy() {
                assert_eq!(t.scope(), Scope::Mesh);
                assert!(t.name().starts_with("Mesh"));
            }
            // The empty spec of every type survives a JSON round trip.
            let empty = t.empty_spec();
            assert_eq!(
                Spec::from_value(*t, empty.to_value()).as_ref(),
                Ok(&empty),
                "{t}"
            );
        }
        assert_eq!(
            ResourceType::ALL.iter().filter(|t| t.is_policy()).count(),
            16
        );
    }
}
