//! Finding the credential in a request's headers, whatever carried them (HTTP headers, gRPC
//! metadata, the header map Envoy sends): the header strategies (`Authorization`, `X-Api-Key`)
//! and the session cookie strategy.

use std::collections::HashMap;

use crate::{
    accounts::{AccountsError, Credentials},
    domain::jwt,
};

/// Longest token worth looking up; longer ones are refused without touching the database.
const MAX_TOKEN_LEN: usize = 512;

/// Read access to a request's headers, by lowercase name.
pub trait HeaderSource {
    /// Every value of the header `name` (lowercase), in the order received.
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of `name`, when it is text.
    fn text(&self, name: &'static str) -> Option<&str> {
        self.values(name)
            .next()
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every value of `name` in order, `None` for one that is not text.
    fn texts<'a>(&'a self, name: &'static str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.values(name)
            .map(|value| std::str::from_utf8(value).ok())
    }
}

impl HeaderSource for http::HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(http::HeaderValue::as_bytes)
    }
}

impl HeaderSource for tonic::metadata::MetadataMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name)
            .iter()
            .map(tonic::metadata::MetadataValue::as_encoded_bytes)
    }
}

/// Headers as Envoy's `CheckRequest` carries them: lowercase keys, repeated headers merged.
impl HeaderSource for HashMap<String, String> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get(name).map(String::as_bytes).into_iter()
    }
}

/// The header strategies: `Authorization: Token <api token>`, `Authorization: Bearer <session
/// token or access token>` (keywords in any case; an access token is told by its JWT shape) or `X-Api-Key: <api token>`. `Ok(None)` when there is none; a
/// header that is present but malformed is refused, never skipped.
pub fn from_headers(headers: &impl HeaderSource) -> Result<Option<Credentials>, AccountsError> {
    if let Some(value) = headers.values("authorization").next() {
        let value = ascii(value, "the authorization header must be ASCII")?;
        let (scheme, token) =
            value
                .trim()
                .split_once(' ')
                .ok_or(AccountsError::CredentialsMalformed(
                    "authorization must be `Token <api token>` or `Bearer <session token>`",
                ))?;
        let token = token.trim();
        return if scheme.eq_ignore_ascii_case("token") {
            Ok(Some(Credentials::ApiToken(checked_token(token)?)))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            // Access tokens are JWTs; session tokens are hex.
            if token.len() > jwt::MAX_TOKEN_BYTES {
                Err(AccountsError::TokenInvalid)
            } else if jwt::looks_like_jwt(token) {
                Ok(Some(Credentials::AccessToken(token.to_owned())))
            } else {
                Ok(Some(Credentials::Session(checked_token(token)?)))
            }
        } else {
            Err(AccountsError::CredentialsMalformed(
                "authorization scheme must be Token or Bearer",
            ))
        };
    }
    if let Some(value) = headers.values("x-api-key").next() {
        let token = ascii(value, "the x-api-key header must be ASCII")?;
        return Ok(Some(Credentials::ApiToken(checked_token(token.trim())?)));
    }
    Ok(None)
}

/// The cookie strategy: the session token in the cookie `name` (Label Studio's `sessionid`).
/// Every `Cookie` header counts; the first non-empty value of the cookie wins, as browsers send
/// the cookie of the most specific path first. `Ok(None)` when there is none.
pub fn from_cookie(
    headers: &impl HeaderSource,
    name: &str,
) -> Result<Option<Credentials>, AccountsError> {
    let found = headers
        .values("cookie")
        .filter_map(|header| std::str::from_utf8(header).ok())
        .flat_map(cookie_pairs)
        .find(|(key, value)| *key == name && !value.is_empty());
    match found {
        Some((_, value)) => Ok(Some(Credentials::Session(checked_token(value)?))),
        None => Ok(None),
    }
}

/// The `name=value` pairs of a `Cookie` header, values unquoted. Pairs are separated by `;`, and
/// by `,` too: no cookie value may hold one, and proxies that merge repeated headers join with it.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split([';', ',']).filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((key.trim(), value))
    })
}

fn ascii<'a>(value: &'a [u8], message: &'static str) -> Result<&'a str, AccountsError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or(AccountsError::CredentialsMalformed(message))
}

fn checked_token(token: &str) -> Result<String, AccountsError> {
    if token.is_empty() {
        return Err(AccountsError::CredentialsMalformed(
            "the credentials carry an empty token",
        ));
    }
    if token.len() > MAX_TOKEN_LEN || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(AccountsError::TokenInvalid);
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn session(found: Result<Option<Credentials>, AccountsError>) -> Option<String> {
        match found {
            Ok(Some(Credentials::Session(token))) => Some(token),
            _ => None,
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let map = headers(&[("cookie", "csrftoken=abc; sessionid=s3ss; theme=dark")]);
        assert_eq!(
            session(from_cookie(&map, "sessionid")).as_deref(),
            Some("s3ss")
        );
    }

    #[test]
    fn quoted_values_spaces_and_split_headers_are_read() {
        let map = headers(&[("cookie", " sessionid = \"s3ss\" ;theme=dark")]);
        assert_eq!(
            session(from_cookie(&map, "sessionid")).as_deref(),
            Some("s3ss")
        );
        let split = headers(&[("cookie", "csrftoken=abc"), ("cookie", "sessionid=s3ss")]);
        assert_eq!(
            session(from_cookie(&split, "sessionid")).as_deref(),
            Some("s3ss")
        );
        let merged = headers(&[("cookie", "csrftoken=abc, sessionid=s3ss")]);
        assert_eq!(
            session(from_cookie(&merged, "sessionid")).as_deref(),
            Some("s3ss")
        );
    }

    #[test]
    fn of_duplicate_cookies_the_first_non_empty_one_wins() {
        let map = headers(&[("cookie", "sessionid=; sessionid=first; sessionid=second")]);
        assert_eq!(
            session(from_cookie(&map, "sessionid")).as_deref(),
            Some("first")
        );
    }

    #[test]
    fn similar_names_and_empty_cookies_are_no_credentials() {
        for cookie in [
            "xsessionid=abc",
            "sessionidx=abc",
            "SessionId=abc",
            "sessionid=",
            "sessionid=\"\"",
            "sessionid",
            "",
            ";;;",
        ] {
            let map = headers(&[("cookie", cookie)]);
            assert!(
                matches!(from_cookie(&map, "sessionid"), Ok(None)),
                "{cookie:?}"
            );
        }
    }

    #[test]
    fn a_custom_cookie_name_is_honoured() {
        let map = headers(&[("cookie", "sessionid=old; ls_session=new")]);
        assert_eq!(
            session(from_cookie(&map, "ls_session")).as_deref(),
            Some("new")
        );
    }

    #[test]
    fn header_keywords_are_case_insensitive() {
        for value in ["Token abc123", "token abc123", "TOKEN  abc123"] {
            assert!(matches!(
                from_headers(&headers(&[("authorization", value)])),
                Ok(Some(Credentials::ApiToken(t))) if t == "abc123"
            ));
        }
        assert!(matches!(
            from_headers(&headers(&[("authorization", "bearer s3ss")])),
            Ok(Some(Credentials::Session(t))) if t == "s3ss"
        ));
        assert!(matches!(
            from_headers(&headers(&[("x-api-key", "abc123")])),
            Ok(Some(Credentials::ApiToken(t))) if t == "abc123"
        ));
    }

    #[test]
    fn malformed_headers_are_refused_not_ignored() {
        for value in ["Basic dXNlcg==", "Token", "Token ", "abc123"] {
            assert!(
                from_headers(&headers(&[("authorization", value)])).is_err(),
                "{value}"
            );
        }
        let long = format!("Token {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(matches!(
            from_headers(&headers(&[("authorization", &long)])),
            Err(AccountsError::TokenInvalid)
        ));
        assert!(matches!(from_headers(&http::HeaderMap::new()), Ok(None)));
    }

    #[test]
    fn envoy_header_maps_are_read_by_lowercase_key() {
        let map = HashMap::from([
            ("x-api-key".to_owned(), "abc123".to_owned()),
            ("cookie".to_owned(), "sessionid=s3ss".to_owned()),
        ]);
        assert!(matches!(
            from_headers(&map),
            Ok(Some(Credentials::ApiToken(t))) if t == "abc123"
        ));
        assert_eq!(
            session(from_cookie(&map, "sessionid")).as_deref(),
            Some("s3ss")
        );
    }
}
