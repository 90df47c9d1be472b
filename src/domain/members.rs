//! Members of an organization: their role, the People page's search text, page sizes, the
//! organization's title, and the opaque page token of a member listing.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{OrganizationId, ParseError, User, UserId, has_control};

/// A member's role: the organization's creator owns it, as in Label Studio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Owner,
    Member,
}

impl MemberRole {
    /// The role of `user` in an organization created by `created_by`.
    pub fn of(user: UserId, created_by: Option<UserId>) -> Self {
        if created_by == Some(user) {
            Self::Owner
        } else {
            Self::Member
        }
    }
}

/// A user as a member of an organization; `removed_at` is set once they were removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: User,
    pub role: MemberRole,
    pub joined_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// Members per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 30;
/// The most members one page holds; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A requested page size: 0 means the default, larger than the maximum means the maximum.
pub fn page_size(requested: i32) -> Result<u32, ParseError> {
    match u32::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        Err(_) => Err(ParseError::new(
            "PAGE_SIZE_INVALID",
            "page_size must not be negative",
        )),
    }
}

/// Longest search text the People page sends.
pub const MAX_QUERY_CHARS: usize = 256;

/// What the People page searches for: trimmed, lowercased, no control characters (which also
/// keeps it from matching across the separator between the fields it is matched against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberQuery(String);

impl MemberQuery {
    /// `None` for an empty query, which matches everyone.
    pub fn parse(input: &str) -> Result<Option<Self>, ParseError> {
        if input.chars().take(MAX_QUERY_CHARS + 1).count() > MAX_QUERY_CHARS {
            return Err(ParseError::new(
                "QUERY_INVALID",
                format!("query must be at most {MAX_QUERY_CHARS} characters"),
            ));
        }
        if has_control(input) {
            return Err(ParseError::new(
                "QUERY_INVALID",
                "query must not contain control characters",
            ));
        }
        let query = input.trim().to_lowercase();
        Ok((!query.is_empty()).then_some(Self(query)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A `LIKE … ESCAPE '\'` pattern matching any text that contains the query.
    pub fn like_pattern(&self) -> String {
        let escaped = self
            .0
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    }
}

/// Longest organization title.
pub const MAX_TITLE_CHARS: usize = 1000;

/// An organization's title: 1 to 1000 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationTitle(String);

impl OrganizationTitle {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if has_control(input) {
            return Err(ParseError::new(
                "TITLE_INVALID",
                "title must not contain control characters",
            ));
        }
        let title = input.trim();
        let chars = title.chars().take(MAX_TITLE_CHARS + 1).count();
        if !(1..=MAX_TITLE_CHARS).contains(&chars) {
            return Err(ParseError::new(
                "TITLE_INVALID",
                format!("title must be 1 to {MAX_TITLE_CHARS} characters"),
            ));
        }
        Ok(Self(title.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id as a request names it: a positive decimal integer.
pub fn parse_user_id(input: &str) -> Result<UserId, ParseError> {
    input
        .parse::<UserId>()
        .ok()
        .filter(|id| *id > 0 && !input.starts_with('+'))
        .ok_or_else(|| ParseError::new("USER_ID_INVALID", "user_id must be a decimal user id"))
}

/// Where a member listing goes on: after the member who joined at `joined_at` with `user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub joined_at: DateTime<Utc>,
    pub user_id: UserId,
}

/// The listing a page token belongs to: a token only continues the listing it came from.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    pub organization: OrganizationId,
    pub query: Option<&'a MemberQuery>,
    pub include_removed: bool,
}

impl Listing<'_> {
    /// A digest of what the listing asks for, so a token from another query is refused.
    fn digest(&self) -> [u8; 16] {
        let mut hash = Sha256::new();
        hash.update(self.organization.to_be_bytes());
        hash.update([
            u8::from(self.include_removed),
            u8::from(self.query.is_some()),
        ]);
        hash.update(self.query.map(MemberQuery::as_str).unwrap_or_default());
        let full = hash.finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        digest
    }
}

const TOKEN_VERSION: u8 = 1;
/// Version, digest, joined_at (microseconds), user id.
const TOKEN_BODY_LEN: usize = 1 + 16 + 8 + 8;
const TOKEN_MAC_LEN: usize = 32;

/// Signs and checks page tokens with a key every replica shares.
pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// The token of the page that starts after `cursor` in `listing`.
    pub fn issue(&self, listing: &Listing<'_>, cursor: PageCursor) -> String {
        let mut token = Vec::with_capacity(TOKEN_BODY_LEN + TOKEN_MAC_LEN);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(&listing.digest());
        token.extend_from_slice(&cursor.joined_at.timestamp_micros().to_be_bytes());
        token.extend_from_slice(&cursor.user_id.to_be_bytes());
        let mac = hmac_sha256(&self.key, &token);
        token.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The cursor of a token this service issued for the very same listing.
    pub fn check(&self, listing: &Listing<'_>, token: &str) -> Result<PageCursor, ParseError> {
        let invalid = || {
            ParseError::new(
                "PAGE_TOKEN_INVALID",
                "page_token is not a next_page_token of this listing",
            )
        };
        if token.len() > 2 * (TOKEN_BODY_LEN + TOKEN_MAC_LEN) {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if bytes.len() != TOKEN_BODY_LEN + TOKEN_MAC_LEN {
            return Err(invalid());
        }
        let (body, mac) = bytes.split_at(TOKEN_BODY_LEN);
        if !bool::from(hmac_sha256(&self.key, body).ct_eq(mac)) {
            return Err(invalid());
        }
        if body[0] != TOKEN_VERSION || body[1..17] != listing.digest() {
            return Err(invalid());
        }
        let micros = i64::from_be_bytes(body[17..25].try_into().map_err(|_| invalid())?);
        let user_id = i64::from_be_bytes(body[25..33].try_into().map_err(|_| invalid())?);
        let joined_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        Ok(PageCursor { joined_at, user_id })
    }
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_cases() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(
            hex::encode(mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn cursor() -> PageCursor {
        PageCursor {
            joined_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            user_id: 42,
        }
    }

    #[test]
    fn a_page_token_continues_only_its_own_listing() {
        let tokens = PageTokens::new(b"key");
        let query = MemberQuery::parse("Ann").unwrap().unwrap();
        let listing = Listing {
            organization: 1,
            query: Some(&query),
            include_removed: false,
        };
        let token = tokens.issue(&listing, cursor());
        assert_eq!(tokens.check(&listing, &token).unwrap(), cursor());

        let other_query = MemberQuery::parse("bob").unwrap().unwrap();
        for other in [
            Listing {
                organization: 2,
                ..listing
            },
            Listing {
                include_removed: true,
                ..listing
            },
            Listing {
                query: None,
                ..listing
            },
            Listing {
                query: Some(&other_query),
                ..listing
            },
        ] {
            assert_eq!(
                tokens.check(&other, &token).unwrap_err().reason,
                "PAGE_TOKEN_INVALID"
            );
        }
        assert!(
            PageTokens::new(b"other key")
                .check(&listing, &token)
                .is_err()
        );
    }

    #[test]
    fn a_tampered_or_malformed_page_token_is_refused() {
        let tokens = PageTokens::new(b"key");
        let listing = Listing {
            organization: 1,
            query: None,
            include_removed: false,
        };
        let token = tokens.issue(&listing, cursor());
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[30] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(&bytes);
        for bad in ["", "x", "!!!!", &tampered, &"A".repeat(10_000)] {
            assert!(tokens.check(&listing, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0).unwrap(), 30);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert_eq!(page_size(-1).unwrap_err().reason, "PAGE_SIZE_INVALID");
    }

    #[test]
    fn queries_are_trimmed_lowercased_and_escaped_for_like() {
        assert_eq!(MemberQuery::parse("  ").unwrap(), None);
        let query = MemberQuery::parse(" Ann_50%\\ ").unwrap().unwrap();
        assert_eq!(query.as_str(), "ann_50%\\");
        assert_eq!(query.like_pattern(), "%ann\\_50\\%\\\\%");
        assert!(MemberQuery::parse("a\u{1}b").is_err());
        assert!(MemberQuery::parse(&"q".repeat(257)).is_err());
    }

    #[test]
    fn titles_and_user_ids_are_checked() {
        assert_eq!(OrganizationTitle::parse(" Acme ").unwrap().as_str(), "Acme");
        assert!(OrganizationTitle::parse("  ").is_err());
        assert!(OrganizationTitle::parse("a\nb").is_err());
        assert!(OrganizationTitle::parse(&"t".repeat(1000)).is_ok());
        assert!(OrganizationTitle::parse(&"t".repeat(1001)).is_err());
        assert_eq!(parse_user_id("17").unwrap(), 17);
        for bad in ["", "0", "-3", "+3", "x", "1.5", "99999999999999999999"] {
            assert!(parse_user_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_creator_owns_the_organization() {
        assert_eq!(MemberRole::of(1, Some(1)), MemberRole::Owner);
        assert_eq!(MemberRole::of(2, Some(1)), MemberRole::Member);
        assert_eq!(MemberRole::of(2, None), MemberRole::Member);
    }
}
