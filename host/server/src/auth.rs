//! Authentication: `Authorization: Bearer <JWT>` to a [`Principal`].
//!
//! Keys come from the host config ([`AuthConfig`]): an HS256 secret, an Ed25519 public key or
//! an RS256 public key (PEM), any of them at once; the token's `alg` picks the key. `alg: none`,
//! unknown algorithms, bad signatures, expired and not-yet-valid tokens are refused. The
//! `scope` claim (space-separated, or an array) carries capabilities; `sub` and the tenant
//! claim own the operations the caller starts.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::watch_token::WatchTokens;

/// Where the host finds its token keys, and how it reads claims.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, inline (prefer `hs256_secret_env`).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Name of the environment variable that holds the HS256 secret.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// Ed25519 public key file (PEM).
    #[serde(default)]
    pub ed25519_public_key: Option<PathBuf>,
    /// RS256 public key file (PEM).
    #[serde(default)]
    pub rs256_public_key: Option<PathBuf>,
    /// The claim that names the caller's tenant (default `tenant`).
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Accepted issuers (`iss`); any when empty.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`); tokens with an `aud` claim are refused when empty.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 5).
    #[serde(default)]
    pub leeway_secs: Option<u64>,
    /// Name of the environment variable holding the key watch tokens are signed with. Hosts
    /// sharing a database behind one address need the same one; a random key per process
    /// otherwise.
    #[serde(default)]
    pub watch_token_secret_env: Option<String>,
}

/// The tenant of callers whose token carries no tenant claim.
pub use opshost_api::id::DEFAULT_TENANT;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The tenant whose operations the caller sees.
    pub tenant: String,
    /// Capabilities from the `scope` claim.
    pub scopes: Vec<String>,
    /// When the token expires (`exp`, Unix seconds).
    pub expires: u64,
}

/// Why a request is not authenticated (HTTP 401, code `Unauthenticated`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing `Authorization: Bearer <token>` header")]
    Missing,
    /// The header is not `Bearer <token>` or the token is not a JWT.
    #[error("malformed bearer token: {0}")]
    Malformed(String),
    /// The token's algorithm is not one the host has a key for (this includes `none`).
    #[error("token algorithm `{0}` is not accepted")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    Signature,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet (`nbf`).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Another claim is wrong (issuer, audience, a missing `sub` or `exp`).
    #[error("token claims are not accepted: {0}")]
    Claims(String),
}

/// A host config whose keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// No key is configured at all.
    #[error(
        "no token key configured: set auth.hs256_secret_env, auth.ed25519_public_key or auth.rs256_public_key"
    )]
    NoKey,
    /// The named environment variable is not set.
    #[error("environment variable `{var}` (auth.{field}) is not set")]
    MissingEnv {
        /// The config field naming it.
        field: &'static str,
        /// The variable.
        var: String,
    },
    /// A key file cannot be read or parsed.
    #[error("auth.{field}: {message}")]
    Key {
        /// The config field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    List(Vec<String>),
}

impl Scope {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
            Self::List(list) => list,
        }
    }
}

/// Verifies bearer tokens with the configured keys.
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    tenant_claim: String,
    validation: Validation,
    watch: WatchTokens,
}

impl Authenticator {
    /// Loads the keys named by `config`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        let secret = match (&config.hs256_secret, &config.hs256_secret_env) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(var)) => {
                Some(std::env::var(var).map_err(|_| AuthConfigError::MissingEnv {
                    field: "hs256_secret_env",
                    var: var.clone(),
                })?)
            }
            (None, None) => None,
        };
        if let Some(secret) = secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(path) = &config.ed25519_public_key {
            let pem = read_key("ed25519_public_key", path)?;
            let key = DecodingKey::from_ed_pem(&pem).map_err(|e| AuthConfigError::Key {
                field: "ed25519_public_key",
                message: e.to_string(),
            })?;
            keys.push((Algorithm::EdDSA, key));
        }
        if let Some(path) = &config.rs256_public_key {
            let pem = read_key("rs256_public_key", path)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthConfigError::Key {
                field: "rs256_public_key",
                message: e.to_string(),
            })?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Err(AuthConfigError::NoKey);
        }
        let watch_secret = match &config.watch_token_secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| AuthConfigError::MissingEnv {
                field: "watch_token_secret_env",
                var: var.clone(),
            })?),
            None => None,
        };
        let watch =
            WatchTokens::new(watch_secret.as_deref().map(str::as_bytes)).map_err(|message| {
                AuthConfigError::Key {
                    field: "watch_token_secret_env",
                    message,
                }
            })?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs.unwrap_or(5);
        if !config.issuers.is_empty() {
            validation.set_issuer(&config.issuers);
        }
        if !config.audiences.is_empty() {
            validation.set_audience(&config.audiences);
        }
        Ok(Self {
            keys,
            tenant_claim: config
                .tenant_claim
                .clone()
                .unwrap_or_else(|| "tenant".into()),
            validation,
            watch,
        })
    }

    /// The watch tokens of `EventSource` callers.
    pub(crate) fn watch_tokens(&self) -> &WatchTokens {
        &self.watch
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| AuthError::Malformed("expected `Bearer <token>`".into()))?;
        let alg = token_algorithm(token)?;
        let Some((alg, key)) = self
            .keys
            .iter()
            .find(|(known, _)| format!("{known:?}") == alg)
        else {
            return Err(AuthError::Algorithm(alg));
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![*alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(classify)?;
        let mut claims = data.claims;
        if claims.extra.get("aud").and_then(|aud| aud.as_str())
            == Some(crate::watch_token::AUDIENCE)
        {
            return Err(AuthError::Claims(
                "a watch token is accepted only as `access_token` on its operation's events".into(),
            ));
        }
        let tenant = match claims.extra.remove(&self.tenant_claim) {
            None | Some(serde_json::Value::Null) => DEFAULT_TENANT.to_owned(),
            Some(serde_json::Value::String(tenant)) if !tenant.is_empty() => tenant,
            Some(_) => {
                return Err(AuthError::Claims(format!(
                    "claim `{}` must be a non-empty string",
                    self.tenant_claim
                )));
            }
        };
        Ok(Principal {
            subject: claims.sub,
            tenant,
            scopes: claims.scope.map(Scope::into_vec).unwrap_or_default(),
            expires: claims.exp,
        })
    }
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn token_algorithm(token: &str) -> Result<String, AuthError> {
    use base64::Engine;
    let decode_segment = |segment: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .ok()
    };
    let segment = token
        .split('.')
        .next()
        .filter(|_| token.split('.').count() == 3)
        .ok_or_else(|| AuthError::Malformed("a JWT has three dot-separated parts".into()))?;
    let header: serde_json::Value = decode_segment(segment)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| AuthError::Malformed("the token header is not base64url JSON".into()))?;
    header["alg"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Malformed("the token header has no `alg`".into()))
}

fn classify(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed(error.to_string()),
        _ => AuthError::Claims(error.to_string()),
    }
}

fn read_key(field: &'static str, path: &PathBuf) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|e| AuthConfigError::Key {
        field,
        message: format!("{}: {e}", path.display()),
    })
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// The tenant claim's value; none leaves the caller in the default tenant.
    pub tenant: Option<String>,
    /// Capabilities for `scope`.
    pub scopes: Vec<String>,
    /// Lifetime from now.
    pub ttl: Duration,
}

/// Mints an HS256 token, e.g. a development token for `opshost token`.
pub fn mint_hs256(secret: &[u8], request: &TokenRequest) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut extra = serde_json::Map::new();
    if let Some(tenant) = &request.tenant {
        extra.insert("tenant".into(), tenant.clone().into());
    }
    extra.insert("iat".into(), now.into());
    let claims = Claims {
        sub: request.subject.clone(),
        exp: now + request.ttl.as_secs(),
        nbf: None,
        scope: Some(Scope::Text(request.scopes.join(" "))),
        extra,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Claims(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_token_key_that_is_unset_or_short_stops_the_host_naming_it() {
        let config = |var: &str| AuthConfig {
            hs256_secret: Some("a-secret-shared-by-both-kinds-of-token!!".into()),
            watch_token_secret_env: Some(var.into()),
            ..AuthConfig::default()
        };
        let unset = Authenticator::from_config(&config("OPSHOST_TEST_NO_SUCH_VARIABLE"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            unset.contains("auth.watch_token_secret_env") && unset.contains("NO_SUCH_VARIABLE"),
            "{unset}"
        );
        let (short_var, _) = std::env::vars()
            .find(|(_, value)| !value.is_empty() && value.len() < 32)
            .expect("some environment variable holds a short value");
        let short = Authenticator::from_config(&config(&short_var))
            .err()
            .unwrap()
            .to_string();
        assert!(
            short.contains("auth.watch_token_secret_env") && short.contains("at least 32"),
            "{short}"
        );
    }

    #[test]
    fn a_watch_token_is_no_bearer_token_even_signed_with_the_bearer_secret() {
        let secret = "a-secret-shared-by-both-kinds-of-token!!";
        let auth = Authenticator::from_config(&AuthConfig {
            hs256_secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let watch = WatchTokens::new(Some(secret.as_bytes())).unwrap();
        let caller = Principal {
            subject: "alice".into(),
            tenant: "acme".into(),
            scopes: vec!["orders.observe".into()],
            expires: jsonwebtoken::get_current_timestamp() + 600,
        };
        let (token, _) = watch
            .mint(&caller, "op-1", Duration::from_secs(60))
            .unwrap();
        let refused = auth.authenticate(Some(&format!("Bearer {token}")));
        assert!(matches!(refused, Err(AuthError::Claims(_))), "{refused:?}");
    }
}
