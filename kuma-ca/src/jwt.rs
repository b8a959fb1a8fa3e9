//! RS256 JSON Web Tokens (RFC 7519) as Kuma issues them: header `kid` names the signing key,
//! registered claims `jti`, `iat`, `nbf`, `exp`, and the token kind's own claims beside them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::TokenError;
use crate::signing_key::SigningKey;

/// How far back `iat`/`nbf` are set, and how much longer `exp` is, to absorb clock skew
/// between control-plane instances (as Kuma does).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs `claims` plus fresh registered claims valid for `valid_for` from `now`.
pub fn issue(
    key: &SigningKey,
    mut claims: Map<String, Value>,
    valid_for: Duration,
    now: u64,
) -> Result<String, TokenError> {
    let start = now.saturating_sub(CLOCK_SKEW.as_secs());
    let exp = now
        .saturating_add(valid_for.as_secs())
        .saturating_add(CLOCK_SKEW.as_secs());
    claims.insert("jti".into(), Value::String(random_uuid()?));
    claims.insert("iat".into(), json!(start));
    claims.insert("nbf".into(), json!(start));
    claims.insert("exp".into(), json!(exp));
    let header = json!({"alg": "RS256", "kid": key.kid(), "typ": "JWT"});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
    );
    let sig = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// A token whose structure is known but whose signature is not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    kid: String,
    signing_input: &'a str,
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

/// Splits and decodes `token`; refuses anything but RS256 with a `kid`.
pub fn parse(token: &str) -> Result<Unverified<'_>, TokenError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let header = decode_object("header", h)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => {}
        Some(other) => return Err(TokenError::UnsupportedAlgorithm(other.into())),
        None => return Err(TokenError::Malformed("the header has no alg".into())),
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(TokenError::Malformed("kid must be a string".into())),
        None => return Err(TokenError::MissingKeyId),
    };
    let claims = decode_object("claims", c)?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("the signature is not base64url".into()))?;
    Ok(Unverified {
        kid,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
        claims,
    })
}

impl Unverified<'_> {
    /// A string claim as written, before the signature is checked: only to find the key to
    /// check it with, never to trust.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name)?.as_str()
    }

    /// The `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `key` and the validity window at `now`; the claims.
    pub fn verify(self, key: &SigningKey, now: u64) -> Result<Map<String, Value>, TokenError> {
        if !key.verify(self.signing_input.as_bytes(), &self.signature) {
            return Err(TokenError::BadSignature);
        }
        let time = |name: &str| -> Result<Option<u64>, TokenError> {
            match self.claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| TokenError::Malformed(format!("{name} must be a number"))),
            }
        };
        let exp = time("exp")?;
        if exp.is_some_and(|exp| now >= exp) {
            return Err(TokenError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::NotYetValid);
        }
        Ok(self.claims)
    }
}

fn decode_object(what: &str, part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// A random (version 4) UUID.
fn random_uuid() -> Result<String, TokenError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| TokenError::Key("no randomness available".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}
