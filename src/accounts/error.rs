//! What the account use cases can refuse, in terms callers act on.

use crate::{domain::ParseError, password::HashError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{error}")]
    InvalidField {
        field: &'static str,
        error: ParseError,
    },
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Internal: a chosen API token collided with another. Callers see `UserTokenRejected`.
    #[error("this API token is already in use")]
    UserTokenTaken,
    /// A chosen API token that is too easy to guess or not available; the answer never tells
    /// which.
    #[error(
        "this user_token can't be used: it is too easy to guess or not available; choose another"
    )]
    UserTokenRejected,
    /// The same for an unknown email, a wrong password and an inactive user.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("the token is invalid or expired")]
    TokenInvalid,
    #[error("this call needs caller credentials")]
    CredentialsMissing,
    #[error("{0}")]
    CredentialsMalformed(&'static str),
    #[error("signup is allowed only through an invite link")]
    SignupRequiresInvite,
    #[error("only an authenticated caller may choose user_token")]
    UserTokenNotAllowed,
    #[error("the invite link is invalid or has been reset")]
    InviteInvalid,
    #[error("the caller is not a member of an organization")]
    NotAMember,
    #[error("this call needs a session token (authorization: Bearer)")]
    SessionRequired,
    #[error("You already have a valid token. Please revoke it before creating a new one.")]
    TokenExists,
    #[error("personal access tokens are disabled for this organization")]
    PersonalTokensDisabled,
    /// A PAT that is already revoked (or never was one) when revoking it.
    #[error("the token is invalid or already revoked")]
    TokenNotFound,
    #[error(
        "Authentication token no longer valid: legacy token authentication has been disabled for this organization"
    )]
    LegacyTokensDisabled,
    #[error("only the organization's owner may do this")]
    OwnerRequired,
    #[error("the service is busy; retry shortly")]
    Overloaded,
    /// Too many recent failures from this client or for this account.
    #[error("too many failed attempts; retry later")]
    Throttled { retry_after: std::time::Duration },
    #[error("the service is starting or its database is unavailable")]
    Unavailable(#[source] Option<StoreError>),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
    /// Also for accounts outside the caller's organization, so the answer never tells whether
    /// an account exists elsewhere.
    #[error("no such user in the caller's organization")]
    UserNotFound,
    #[error("no such member in the caller's organization")]
    MemberNotFound,
    #[error("the owner cannot remove themself from the organization")]
    CannotRemoveSelf,
    #[error("the organization's owner cannot be deleted")]
    OwnerCannotBeDeleted,
}

impl AccountsError {
    /// The stable, machine-readable reason callers and the audit trail see.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidField { error, .. } => error.reason,
            Self::EmailTaken => "EMAIL_TAKEN",
            Self::UserTokenTaken => "USER_TOKEN_TAKEN",
            Self::UserTokenRejected => "USER_TOKEN_REJECTED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::TokenInvalid => "TOKEN_INVALID",
            Self::CredentialsMissing => "CREDENTIALS_MISSING",
            Self::CredentialsMalformed(_) => "CREDENTIALS_MALFORMED",
            Self::SignupRequiresInvite => "SIGNUP_REQUIRES_INVITE",
            Self::UserTokenNotAllowed => "USER_TOKEN_NOT_ALLOWED",
            Self::InviteInvalid => "INVITE_INVALID",
            Self::NotAMember => "NOT_A_MEMBER",
            Self::SessionRequired => "SESSION_REQUIRED",
            Self::TokenExists => "TOKEN_EXISTS",
            Self::PersonalTokensDisabled => "PERSONAL_ACCESS_TOKENS_DISABLED",
            Self::TokenNotFound => "TOKEN_INVALID",
            Self::LegacyTokensDisabled => "LEGACY_TOKENS_DISABLED",
            Self::OwnerRequired => "OWNER_REQUIRED",
            Self::Overloaded => "OVERLOADED",
            Self::Throttled { .. } => "THROTTLED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Unexpected(_) => "INTERNAL",
            Self::UserNotFound => "USER_NOT_FOUND",
            Self::MemberNotFound => "MEMBER_NOT_FOUND",
            Self::CannotRemoveSelf => "CANNOT_REMOVE_SELF",
            Self::OwnerCannotBeDeleted => "OWNER_CANNOT_BE_DELETED",
        }
    }

    pub fn invalid(field: &'static str) -> impl FnOnce(ParseError) -> Self {
        move |error| Self::InvalidField { field, error }
    }
}

impl From<StoreError> for AccountsError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable(Some(error)),
            StoreError::InviteNotFound => Self::InviteInvalid,
            StoreError::OrganizationNotFound => Self::NotAMember,
            StoreError::Conflict(crate::store::Unique::Email) => Self::EmailTaken,
            StoreError::Conflict(crate::store::Unique::Token) => Self::UserTokenTaken,
            other => Self::Unexpected(other.into()),
        }
    }
}

impl From<HashError> for AccountsError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded => Self::Overloaded,
            HashError::Unexpected(message) => Self::Unexpected(anyhow::anyhow!(message)),
        }
    }
}
