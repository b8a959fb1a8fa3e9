//! The `mtls` section of the control-plane configuration (not a Kuma key; `KUMA_MTLS_*`).

use serde::{Deserialize, Serialize};

use crate::ca::{KeyType, SanLayout};

/// `mtls`: how this control plane issues mesh certificates. Kuma has no such settings; the
/// defaults are Kuma's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MtlsConfig {
    /// Key type of new builtin CAs and of workload certificates.
    pub key_type: KeyType,
    /// URI SANs of workload certificates.
    pub san_layout: SanLayout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_spelled_as_documented() {
        let c: MtlsConfig =
            serde_json::from_str(r#"{"keyType": "ecdsaP256", "sanLayout": "strictSpiffe"}"#)
                .unwrap();
        assert_eq!(c.key_type, KeyType::EcdsaP256);
        assert_eq!(c.san_layout, SanLayout::StrictSpiffe);
        assert_eq!(
            serde_json::to_value(MtlsConfig::default()).unwrap(),
            serde_json::json!({"keyType": "rsa2048", "sanLayout": "kuma"})
        );
    }
}
