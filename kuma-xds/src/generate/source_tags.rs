//! How an inbound knows who is calling over plain HTTP, as Kuma does it: every outbound HTTP
//! request carries the caller's tags in the `x-kuma-tags` header (`&key=v1,v2&` per key), the
//! inbound matches policies' source subsets against it, and removes it before the request
//! reaches the application.
//!
//! The header is the one part of an outbound listener that differs between the proxies of a
//! mesh. So that every proxy can share the same encoded outbound listeners, the header is not
//! written into their route tables (where Kuma writes it) but added by a header-mutation HTTP
//! filter whose config each proxy gets over ECDS: the listener names the extension config
//! [`EXTENSION_NAME`] ([`filter`]), and each proxy's snapshot holds its own
//! ([`extension_config`]). The request the destination receives is the same.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutation as FilterMutation;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as MutationAction;
use envoy_types::pb::envoy::config::core::v3::{
    ExtensionConfigSource, HeaderValue, HeaderValueOption, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use xds_server::envoy::any;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use kuma_core::model::common::Tags;
use kuma_core::model::dataplane::DataplaneSpec;

/// The header carrying the caller's tags.
pub const TAGS_HEADER: &str = "x-kuma-tags";

/// The name of the ECDS resource (and of the HTTP filter) adding the header.
pub const EXTENSION_NAME: &str = "kuma:source-tags";

/// The type URL of the filter config behind [`EXTENSION_NAME`].
const FILTER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";

/// The HTTP filter of outbound listeners that adds the header: its config comes over ADS as
/// the extension config [`EXTENSION_NAME`], one per proxy. Envoy does not use the listener
/// until that config arrived.
pub fn filter() -> HttpFilter {
    HttpFilter {
        name: EXTENSION_NAME.into(),
        config_type: Some(HttpConfigType::ConfigDiscovery(ExtensionConfigSource {
            config_source: Some(xds_server::envoy::ads_config_source()),
            type_urls: vec![FILTER_TYPE_URL.into()],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The extension config [`EXTENSION_NAME`] of the proxy of `dp`: a header-mutation filter
/// adding its tags (adding nothing when it has none).
pub fn extension_config(dp: &DataplaneSpec) -> TypedExtensionConfig {
    let mutations = header_option(dp)
        .map(|option| FilterMutation {
            action: Some(MutationAction::Append(option)),
        })
        .into_iter()
        .collect();
    TypedExtensionConfig {
        name: EXTENSION_NAME.into(),
        typed_config: Some(any(&HeaderMutation {
            mutations: Some(Mutations {
                request_mutations: mutations,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// The header value for a proxy's tags: every tag of its inbounds and gateway, `&key=v1,v2&`
/// per key, keys and values sorted; `None` when it has no tags.
pub fn serialize(dp: &DataplaneSpec) -> Option<String> {
    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let gateway = dp
        .networking
        .as_ref()
        .and_then(|n| n.gateway.as_ref())
        .map(|g| &g.tags);
    for set in dp.inbounds().iter().map(|i| &i.tags).chain(gateway) {
        for (k, v) in set {
            tags.entry(k).or_default().insert(v);
        }
    }
    (!tags.is_empty()).then(|| {
        tags.iter()
            .map(|(k, vs)| format!("&{k}={}&", vs.iter().copied().collect::<Vec<_>>().join(",")))
            .collect()
    })
}

/// The header adding the caller's tags (`None` when it has none).
pub fn header_option(dp: &DataplaneSpec) -> Option<HeaderValueOption> {
    serialize(dp).map(|value| HeaderValueOption {
        header: Some(HeaderValue {
            key: TAGS_HEADER.into(),
            value,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A regular expression matching a serialized tag header that has `key` with `value` among
/// its values. Kuma's `MatchingRegex` (`&key=[^&]*value[,&]`) also matches a value that merely
/// ends with `value` (`myweb` for `web`); this one matches whole values only.
fn tag_regex(key: &str, value: &str) -> String {
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    format!(".*&{}=(?:[^&]*,)?{}[,&].*", escape(key), escape(value))
}

fn matcher(key: &str, value: &str, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: TAGS_HEADER.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: tag_regex(key, value),
                ..Default::default()
            })),
            ..Default::default()
        })),
        invert_match: invert,
        ..Default::default()
    }
}

/// Header matchers selecting the callers of a subset: carrying every tag of `positive` and
/// none of `negated` (all must hold).
pub fn matchers(positive: &Tags, negated: &[(String, String)]) -> Vec<HeaderMatcher> {
    positive
        .iter()
        .map(|(k, v)| matcher(k, v, false))
        .chain(negated.iter().map(|(k, v)| matcher(k, v, true)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_serialize_and_match_as_kuma_does() {
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": 1, "tags": {"kuma.io/service": "web", "version": "v2"}},
                {"port": 2, "tags": {"kuma.io/service": "web-admin", "version": "v1"}},
            ]}
        }))
        .unwrap();
        let header = serialize(&dp).unwrap();
        assert_eq!(header, "&kuma.io/service=web,web-admin&&version=v1,v2&");
        let re = tag_regex("kuma.io/service", "web-admin");
        assert_eq!(re, r".*&kuma\.io/service=(?:[^&]*,)?web-admin[,&].*");
    }
}
