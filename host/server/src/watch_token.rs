//! Watch tokens, for a browser's `EventSource`, which cannot send an `Authorization` header.
//!
//! `POST /v1/operations/{id}/watch-token`, which takes the `observe` capability, mints a token
//! for the caller that lets its holder watch that one operation's events, for `[server]
//! watch_token_ttl_secs`. It is accepted only as `?access_token=` on that operation's
//! `GET .../events`, and nowhere else. Watch tokens are signed with a key of their own
//! (`[auth] watch_token_secret_env` when several hosts must accept each other's, else a random
//! key per process), so a bearer token is never accepted from a query string, and a watch token
//! is never accepted as a bearer token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Principal};

/// The shortest secret a watch-token key may be.
const MIN_SECRET_BYTES: usize = 32;

/// The `aud` of every watch token.
pub(crate) const AUDIENCE: &str = "opshost:watch";

/// What a watch token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    /// The operation it watches.
    op: String,
    exp: u64,
    aud: String,
}

/// Mints and checks watch tokens: see the module docs.
pub(crate) struct WatchTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl WatchTokens {
    /// Watch tokens signed with `secret` (at least 32 bytes), or with a random key when
    /// `None`.
    pub(crate) fn new(secret: Option<&[u8]>) -> Result<Self, String> {
        let mut random = [0u8; 32];
        let secret = match secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "the secret has {} bytes; a watch-token key needs at least {MIN_SECRET_BYTES}",
                    secret.len()
                ));
            }
            Some(secret) => secret,
            None => {
                getrandom::fill(&mut random)
                    .map_err(|e| format!("no randomness for a watch-token key: {e}"))?;
                &random
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// A token letting its holder start watching operation `id` as `caller` for `ttl`, but
    /// never after the caller's own token expires; with its expiry (Unix seconds).
    pub(crate) fn mint(
        &self,
        caller: &Principal,
        id: &str,
        ttl: Duration,
    ) -> Result<(String, u64), AuthError> {
        let exp = (jsonwebtoken::get_current_timestamp() + ttl.as_secs()).min(caller.expires);
        let claims = Claims {
            sub: caller.subject.clone(),
            tenant: caller.tenant.clone(),
            op: id.to_owned(),
            exp,
            aud: AUDIENCE.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        Ok((token, exp))
    }

    /// The caller a watch token of operation `id` was minted for (with no capabilities: it
    /// lets its holder watch, nothing more).
    pub(crate) fn verify(&self, token: &str, id: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Signature,
                _ => AuthError::Malformed(format!("not a watch token: {error}")),
            })?;
        if data.claims.op != id {
            return Err(AuthError::Claims(
                "this watch token is for another operation".to_owned(),
            ));
        }
        Ok(Principal {
            subject: data.claims.sub,
            tenant: data.claims.tenant,
            scopes: Vec::new(),
            expires: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Principal {
        Principal {
            subject: "alice".into(),
            tenant: "acme".into(),
            scopes: vec!["orders.observe".into()],
            expires: jsonwebtoken::get_current_timestamp() + 600,
        }
    }

    #[test]
    fn a_watch_token_never_outlives_the_token_that_minted_it() {
        let tokens = WatchTokens::new(None).unwrap();
        let mut short = caller();
        short.expires = jsonwebtoken::get_current_timestamp() + 5;
        let (_, exp) = tokens
            .mint(&short, "op-1", Duration::from_secs(300))
            .unwrap();
        assert_eq!(exp, short.expires);
    }

    #[test]
    fn a_watch_token_opens_only_its_operation() {
        let tokens = WatchTokens::new(None).unwrap();
        let (token, _) = tokens
            .mint(&caller(), "op-1", Duration::from_secs(60))
            .unwrap();
        let watcher = tokens.verify(&token, "op-1").unwrap();
        assert_eq!(
            (watcher.subject.as_str(), watcher.tenant.as_str()),
            ("alice", "acme")
        );
        assert!(watcher.scopes.is_empty(), "it carries no capability");
        assert!(matches!(
            tokens.verify(&token, "op-2"),
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn a_token_of_another_key_or_an_expired_one_is_refused() {
        let (token, _) = WatchTokens::new(None)
            .unwrap()
            .mint(&caller(), "op-1", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            WatchTokens::new(None).unwrap().verify(&token, "op-1"),
            Err(AuthError::Signature)
        );
        let shared = [7u8; 32];
        assert!(WatchTokens::new(Some(b"short")).is_err(), "a short secret");
        let tokens = WatchTokens::new(Some(&shared)).unwrap();
        let expired = Claims {
            sub: "alice".into(),
            tenant: "acme".into(),
            op: "op-1".into(),
            exp: jsonwebtoken::get_current_timestamp() - 60,
            aud: AUDIENCE.into(),
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(&shared),
        )
        .unwrap();
        assert_eq!(tokens.verify(&expired, "op-1"), Err(AuthError::Expired));
    }
}
