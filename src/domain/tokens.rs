//! Tokens: API tokens, session tokens and invite tokens, and the hash under which the first two
//! are stored.

use rand::{Rng, distr::Alphanumeric};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::ParseError;

pub const MIN_USER_TOKEN_CHARS: usize = 5;
/// Label Studio keeps API tokens in a `varchar(40)`.
pub const MAX_USER_TOKEN_CHARS: usize = 40;
/// Label Studio keeps invite tokens in a `varchar(256)`.
pub const MAX_INVITE_TOKEN_CHARS: usize = 256;
const INVITE_TOKEN_CHARS: usize = 40;

/// The SHA-256 of a token, hex-encoded: what the store keeps instead of the token. Tokens are
/// long random strings, so a fast hash is enough to make a stolen table useless.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(hex::encode(Sha256::digest(token.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `bytes` random bytes, hex-encoded.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}

/// An API token: 40 lowercase hex characters when generated (Label Studio's format).
#[derive(Clone)]
pub struct ApiToken(SecretString);

impl ApiToken {
    pub fn generate() -> Self {
        Self(SecretString::from(random_hex(20)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.expose())
    }
}

impl From<UserToken> for ApiToken {
    fn from(token: UserToken) -> Self {
        Self(token.0)
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(**redacted**)")
    }
}

/// An API token chosen by an administrator or the bootstrap: 5 to 40 visible ASCII characters,
/// since it travels in a metadata header.
#[derive(Clone)]
pub struct UserToken(SecretString);

impl std::fmt::Debug for UserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserToken(**redacted**)")
    }
}

impl UserToken {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let chars = input.chars().take(MAX_USER_TOKEN_CHARS + 1).count();
        if chars < MIN_USER_TOKEN_CHARS {
            return Err(ParseError::new(
                "USER_TOKEN_TOO_SHORT",
                format!("user_token must be at least {MIN_USER_TOKEN_CHARS} characters"),
            ));
        }
        if chars > MAX_USER_TOKEN_CHARS {
            return Err(ParseError::new(
                "USER_TOKEN_TOO_LONG",
                format!("user_token must be at most {MAX_USER_TOKEN_CHARS} characters"),
            ));
        }
        if !input.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ParseError::new(
                "USER_TOKEN_INVALID",
                "user_token may hold only visible ASCII characters",
            ));
        }
        Ok(Self(SecretString::from(input)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A session token: 64 lowercase hex characters (256 random bits).
#[derive(Clone)]
pub struct SessionToken(SecretString);

impl SessionToken {
    pub fn generate() -> Self {
        Self(SecretString::from(random_hex(32)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.expose())
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(**redacted**)")
    }
}

/// An organization's invite token: letters and digits. Generated ones are 40 characters from
/// a CSPRNG; imported Label Studio ones may be of other lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteToken(String);

impl InviteToken {
    pub fn generate() -> Self {
        Self(
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(INVITE_TOKEN_CHARS)
                .map(char::from)
                .collect(),
        )
    }

    /// Accepts either the bare token or a whole invite URL (absolute or relative) carrying it
    /// in its `token` query parameter.
    pub fn parse_invite(input: &str) -> Result<Self, ParseError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(ParseError::new("INVITE_REQUIRED", "invite is required"));
        }
        let token = match input.split_once('?') {
            Some((_, query)) => query_token(query).ok_or_else(|| {
                ParseError::new(
                    "INVITE_MALFORMED",
                    "invite URL carries no token query parameter",
                )
            })?,
            None => input,
        };
        Self::parse(token)
    }

    pub fn parse(token: &str) -> Result<Self, ParseError> {
        if token.is_empty()
            || token.len() > MAX_INVITE_TOKEN_CHARS
            || !token.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ParseError::new(
                "INVITE_MALFORMED",
                format!(
                    "invite token must be 1 to {MAX_INVITE_TOKEN_CHARS} letters and digits, \
                     or an invite URL carrying one"
                ),
            ));
        }
        Ok(Self(token.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<public url>/user/signup/?token=<token>`, relative when no public URL is configured.
    pub fn url(&self, public_url: Option<&str>) -> String {
        let base = public_url.unwrap_or("").trim_end_matches('/');
        format!("{base}/user/signup/?token={}", self.0)
    }
}

/// The `token` query parameter; when it is given more than once the last one counts, as in
/// Django's `request.GET`, so the link means the same here as in Label Studio.
fn query_token(query: &str) -> Option<&str> {
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .next_back()
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_api_tokens_are_forty_lowercase_hex_characters() {
        let token = ApiToken::generate();
        assert_eq!(token.expose().len(), 40);
        assert!(
            token
                .expose()
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(token.expose(), ApiToken::generate().expose());
    }

    #[test]
    fn generated_invite_tokens_are_forty_alphanumerics() {
        let token = InviteToken::generate();
        assert_eq!(token.as_str().len(), 40);
        assert!(token.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn invites_parse_from_tokens_and_urls() {
        let token = "AbC123xyz";
        for input in [
            token.to_owned(),
            format!("https://ls.example.com/user/signup/?token={token}"),
            format!("/user/signup/?token={token}"),
            format!("/user/signup/?next=/projects&token={token}#top"),
        ] {
            assert_eq!(InviteToken::parse_invite(&input).unwrap().as_str(), token);
        }
        for bad in [
            "",
            "/user/signup/?token=",
            "/user/signup/?tok",
            "https://ls.example.com/user/signup/",
            "abc;drop",
            "tok en",
        ] {
            assert!(InviteToken::parse_invite(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_repeated_token_parameter_means_the_last_one_as_in_django() {
        for (input, expected) in [
            ("/user/signup/?token=first&token=last", "last"),
            ("/user/signup/?token=first&next=/x&token=last#top", "last"),
            (
                "https://ls.example.com/user/signup/?token=a&token=b&token=c",
                "c",
            ),
        ] {
            assert_eq!(
                InviteToken::parse_invite(input).unwrap().as_str(),
                expected,
                "{input}"
            );
        }
        assert!(InviteToken::parse_invite("/user/signup/?token=first&token=").is_err());
    }

    #[test]
    fn invite_urls_join_the_public_url() {
        let token = InviteToken::parse("abc").unwrap();
        assert_eq!(token.url(None), "/user/signup/?token=abc");
        assert_eq!(
            token.url(Some("https://ls.example.com/")),
            "https://ls.example.com/user/signup/?token=abc"
        );
    }

    #[test]
    fn user_tokens_have_bounds() {
        assert_eq!(
            UserToken::parse("abcd").err().map(|e| e.reason),
            Some("USER_TOKEN_TOO_SHORT")
        );
        assert!(UserToken::parse("abcde").is_ok());
        assert!(UserToken::parse(&"a".repeat(40)).is_ok());
        assert_eq!(
            UserToken::parse(&"a".repeat(41)).err().map(|e| e.reason),
            Some("USER_TOKEN_TOO_LONG")
        );
        assert_eq!(
            UserToken::parse("abc def").err().map(|e| e.reason),
            Some("USER_TOKEN_INVALID")
        );
    }

    #[test]
    fn token_hashes_are_stable_and_distinct() {
        assert_eq!(TokenHash::of("a"), TokenHash::of("a"));
        assert_ne!(TokenHash::of("a"), TokenHash::of("b"));
        assert_eq!(TokenHash::of("a").as_str().len(), 64);
    }
}
