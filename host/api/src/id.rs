//! Operation ids: what a caller may choose, and how a tenant's key becomes an id.
//!
//! A caller-chosen id (an `Idempotency-Key`, or an id given in-process) is 1 to 200
//! characters of `A-Z a-z 0-9 . _ ~ : -`, and neither `.` nor `..`. Every URL carries such an
//! id unchanged as one path segment.
//!
//! Keys are scoped to their tenant. In the default tenant the id is the key itself; in any
//! other tenant it is `key@tag`, where the tag spells the tenant with every byte outside
//! `A-Z a-z 0-9 _ -` written as `.` and two hex digits. A key holds no `@` and a tag holds no
//! `@`, so two tenants never share an id and nobody can learn another tenant's keys. Such an
//! id is longer than its key and holds one `@`, which a URL path segment carries unescaped.

/// Longest caller-chosen id, in characters.
pub const MAX_KEY_LEN: usize = 200;

/// The tenant of callers whose token names none, and of in-process callers that name none:
/// its operation ids are its keys.
pub const DEFAULT_TENANT: &str = "default";

/// Why a caller-chosen id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "operation id `{key}` is not valid: {reason} (an id is 1 to {MAX_KEY_LEN} characters of \
     A-Z a-z 0-9 . _ ~ : -, and not `.` or `..`)"
)]
pub struct InvalidKey {
    /// The id as given (cut at 64 characters).
    pub key: String,
    /// What breaks the rule.
    pub reason: String,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | ':' | '-')
}

/// Checks a caller-chosen id against the rule above.
pub fn check_key(key: &str) -> Result<(), InvalidKey> {
    let refuse = |reason: String| InvalidKey {
        key: key.chars().take(64).collect(),
        reason,
    };
    let length = key.chars().count();
    if length == 0 || length > MAX_KEY_LEN {
        return Err(refuse(format!("it is {length} characters long")));
    }
    if key == "." || key == ".." {
        return Err(refuse("it is a path step".into()));
    }
    if let Some((position, c)) = key.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(refuse(format!("`{c}` at byte {position} is not allowed")));
    }
    Ok(())
}

/// The id of key `key` in `tenant`: the key itself in the default tenant, else `key@tag`.
/// The key must have passed [`check_key`].
pub fn scoped_id(tenant: &str, key: &str) -> String {
    if tenant == DEFAULT_TENANT {
        return key.to_owned();
    }
    let mut id = String::with_capacity(key.len() + 1 + tenant.len());
    id.push_str(key);
    id.push('@');
    for byte in tenant.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            id.push(char::from(byte));
        } else {
            id.push_str(&format!(".{byte:02X}"));
        }
    }
    id
}

/// `text` as one URL path segment: every byte outside `A-Z a-z 0-9 - . _ ~` percent-encoded.
pub fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_safe_keys_of_up_to_200_characters_pass() {
        for key in [
            "a",
            "checkout-1",
            "ord_1.v2",
            "x:y~z",
            &"k".repeat(200),
            "...",
        ] {
            assert_eq!(check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn path_steps_slashes_and_long_keys_are_refused_naming_the_rule() {
        for key in [
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "a@b",
            "",
            &"k".repeat(201),
            "%2F",
        ] {
            let error = check_key(key).unwrap_err();
            assert!(error.to_string().contains("1 to 200 characters"), "{error}");
        }
        assert!(
            check_key("a/b")
                .unwrap_err()
                .reason
                .contains("`/` at byte 1")
        );
    }

    #[test]
    fn url_segments_escape_everything_but_unreserved_characters() {
        assert_eq!(url_segment("k@acme:1/é"), "k%40acme%3A1%2F%C3%A9");
        assert_eq!(url_segment("a-b._~"), "a-b._~");
    }

    #[test]
    fn the_default_tenant_keeps_its_keys_as_ids() {
        assert_eq!(scoped_id(DEFAULT_TENANT, "k"), "k");
        assert_eq!(
            scoped_id("", "k"),
            "k@",
            "an empty tenant is not the default one"
        );
    }

    #[test]
    fn other_tenants_get_distinct_url_safe_ids() {
        assert_eq!(scoped_id("acme", "k"), "k@acme");
        assert_eq!(scoped_id("acme corp/eu", "k"), "k@acme.20corp.2Feu");
        assert_ne!(scoped_id("a.2E", "k"), scoped_id("a.", "k"));
        let id = scoped_id("tenant.with.dots", "k");
        assert!(id.chars().all(|c| allowed(c) || c == '@'), "{id}");
    }
}
