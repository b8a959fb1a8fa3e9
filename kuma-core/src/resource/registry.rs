//! The resource-type registry and the [`Spec`] enum, generated from one table.

use std::fmt;

use serde_json::Value;

use crate::model::dataplane::DataplaneSpec;
use crate::model::external_service::ExternalServiceSpec;
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

/// How KDS syncs a type between the global control plane and the zones: Kuma's `KDSFlags`
/// bits, so a table written from Kuma's type descriptors reads the same here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KdsFlags(u8);

impl KdsFlags {
    /// Not synced.
    pub const NONE: KdsFlags = KdsFlags(0);
    /// Zones use it (synced when global provides it, or zones share it).
    pub const CONSUMED_BY_ZONE: KdsFlags = KdsFlags(1);
    /// Global uses it (synced when zones provide it).
    pub const CONSUMED_BY_GLOBAL: KdsFlags = KdsFlags(1 << 2);
    /// Zones create, change and delete it.
    pub const PROVIDED_BY_ZONE: KdsFlags = KdsFlags(1 << 3);
    /// Global creates, changes and deletes it.
    pub const PROVIDED_BY_GLOBAL: KdsFlags = KdsFlags(1 << 4);
    /// What one zone provides reaches the other zones (through global).
    pub const SYNCED_ACROSS_ZONES: KdsFlags = KdsFlags(1 << 5);
    /// Sent from zones to global.
    pub const ZONE_TO_GLOBAL: KdsFlags =
        KdsFlags(Self::CONSUMED_BY_GLOBAL.0 | Self::PROVIDED_BY_ZONE.0);
    /// Sent from global to zones.
    pub const GLOBAL_TO_ZONES: KdsFlags =
        KdsFlags(Self::PROVIDED_BY_GLOBAL.0 | Self::CONSUMED_BY_ZONE.0);

    /// Both sets of flags.
    pub const fn union(self, other: KdsFlags) -> KdsFlags {
        KdsFlags(self.0 | other.0)
    }

    /// Whether every flag of `flags` is set (Kuma's `Has`).
    pub const fn has(self, flags: KdsFlags) -> bool {
        self.0 & flags.0 == flags.0 && flags.0 != 0
    }

    /// Global sends resources of the type to zones (its own, or those zones share).
    pub const fn sent_to_zones(self) -> bool {
        self.has(Self::GLOBAL_TO_ZONES) || self.has(Self::SYNCED_ACROSS_ZONES)
    }

    /// Zones send resources of the type to global.
    pub const fn sent_to_global(self) -> bool {
        self.has(Self::ZONE_TO_GLOBAL)
    }
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
    ExternalServiceSpec,
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
        kds: $($flag:ident)|+, policy: $pol:literal;
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

            /// How KDS syncs the type (Kuma's flags for it).
            pub fn kds_flags(self) -> KdsFlags {
                match self { $(ResourceType::$variant => KdsFlags::NONE$(.union(KdsFlags::$flag))+),* }
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
    Mesh(MeshSpec) = "Mesh", Global, Some("meshes"), kds: GLOBAL_TO_ZONES, policy: false;
    Dataplane(DataplaneSpec) = "Dataplane", Mesh, Some("dataplanes"), kds: ZONE_TO_GLOBAL, policy: false;
    DataplaneInsight(CompactSpec) = "DataplaneInsight", Mesh, Some("dataplane-insights"), kds: ZONE_TO_GLOBAL, policy: false;
    ZoneIngress(ZoneIngressSpec) = "ZoneIngress", Global, Some("zoneingresses"), kds: ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: false;
    ZoneEgress(ZoneEgressSpec) = "ZoneEgress", Global, Some("zoneegresses"), kds: ZONE_TO_GLOBAL, policy: false;
    ZoneIngressInsight(CompactSpec) = "ZoneIngressInsight", Global, Some("zone-ingress-insights"), kds: ZONE_TO_GLOBAL, policy: false;
    ZoneEgressInsight(CompactSpec) = "ZoneEgressInsight", Global, Some("zoneegressinsights"), kds: ZONE_TO_GLOBAL, policy: false;
    Zone(ZoneSpec) = "Zone", Global, Some("zones"), kds: PROVIDED_BY_GLOBAL | PROVIDED_BY_ZONE, policy: false;
    ZoneInsight(UntypedSpec) = "ZoneInsight", Global, Some("zone-insights"), kds: PROVIDED_BY_GLOBAL | PROVIDED_BY_ZONE, policy: false;
    Secret(SecretSpec) = "Secret", Mesh, Some("secrets"), kds: GLOBAL_TO_ZONES | PROVIDED_BY_ZONE, policy: false;
    GlobalSecret(SecretSpec) = "GlobalSecret", Global, Some("globalsecrets"), kds: GLOBAL_TO_ZONES | PROVIDED_BY_ZONE, policy: false;
    Config(ConfigSpec) = "Config", Global, None, kds: GLOBAL_TO_ZONES | PROVIDED_BY_ZONE, policy: false;
    ExternalService(ExternalServiceSpec) = "ExternalService", Mesh, Some("external-services"), kds: GLOBAL_TO_ZONES, policy: false;
    MeshGateway(MeshGatewaySpec) = "MeshGateway", Mesh, Some("meshgateways"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL, policy: false;
    MeshTrafficPermission(MeshTrafficPermissionSpec) = "MeshTrafficPermission", Mesh, Some("meshtrafficpermissions"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshTimeout(MeshTimeoutSpec) = "MeshTimeout", Mesh, Some("meshtimeouts"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshRetry(MeshRetrySpec) = "MeshRetry", Mesh, Some("meshretries"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshHealthCheck(MeshHealthCheckSpec) = "MeshHealthCheck", Mesh, Some("meshhealthchecks"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshCircuitBreaker(MeshCircuitBreakerSpec) = "MeshCircuitBreaker", Mesh, Some("meshcircuitbreakers"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshLoadBalancingStrategy(MeshLoadBalancingStrategySpec) = "MeshLoadBalancingStrategy", Mesh, Some("meshloadbalancingstrategies"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshHTTPRoute(MeshHttpRouteSpec) = "MeshHTTPRoute", Mesh, Some("meshhttproutes"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshTCPRoute(MeshTcpRouteSpec) = "MeshTCPRoute", Mesh, Some("meshtcproutes"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshRateLimit(MeshRateLimitSpec) = "MeshRateLimit", Mesh, Some("meshratelimits"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshFaultInjection(MeshFaultInjectionSpec) = "MeshFaultInjection", Mesh, Some("meshfaultinjections"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshAccessLog(MeshAccessLogSpec) = "MeshAccessLog", Mesh, Some("meshaccesslogs"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshTrace(UntypedSpec) = "MeshTrace", Mesh, Some("meshtraces"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshMetric(UntypedSpec) = "MeshMetric", Mesh, Some("meshmetrics"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshProxyPatch(UntypedSpec) = "MeshProxyPatch", Mesh, Some("meshproxypatches"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshPassthrough(UntypedSpec) = "MeshPassthrough", Mesh, Some("meshpassthroughs"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
    MeshTLS(UntypedSpec) = "MeshTLS", Mesh, Some("meshtlses"), kds: GLOBAL_TO_ZONES | ZONE_TO_GLOBAL | SYNCED_ACROSS_ZONES, policy: true;
}

impl ResourceType {
    /// KDS keeps the name of a resource of this type as it is, with no hash suffix (Kuma's
    /// `SkipKDSHash`): meshes, secrets and configs are referred to by name.
    pub fn keeps_name_across_kds(self) -> bool {
        matches!(
            self,
            ResourceType::Mesh
                | ResourceType::Secret
                | ResourceType::GlobalSecret
                | ResourceType::Config
        )
    }
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
    ExternalService(ExternalServiceSpec),
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
