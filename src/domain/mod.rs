//! Pure types of the identity domain: parsed inputs, tokens and the records the service returns.
//! Nothing here performs IO.

mod email;
pub mod jwt;
mod members;
mod names;
mod password;
mod throttle;
mod tokens;

use chrono::{DateTime, Utc};

pub use email::Email;
pub use members::{
    Listing, MAX_PAGE_SIZE, Member, MemberQuery, MemberRole, OrganizationTitle, PageCursor,
    PageTokens, page_size, parse_user_id,
};
pub use names::{PersonName, Username};
pub use password::Password;
pub use throttle::{ThrottleKey, ThrottleRule, throttle_subject};
pub(crate) use tokens::random_hex;
pub use tokens::{ApiToken, InviteToken, SessionToken, TokenHash, UserToken};

/// Why an input was refused: a stable machine-readable reason and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub reason: &'static str,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Refuses control characters (NUL included), which no name, email or token may carry.
pub(crate) fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

pub type UserId = i64;
pub type OrganizationId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub date_joined: DateTime<Utc>,
    /// The organization the user acts in; `None` when the user is a member of none.
    pub organization_id: Option<OrganizationId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrganizationId,
    pub title: String,
    pub created_by_user_id: Option<UserId>,
}

/// A user together with the organization they act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: User,
    pub organization: Option<Organization>,
}

/// The title Label Studio gives the organization the first account creates.
pub const DEFAULT_ORGANIZATION_TITLE: &str = "Label Studio";
