//! The one place errors become `tonic::Status`, with `google.rpc` details. Internal causes are
//! logged here and never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::accounts::AccountsError;

pub const ERROR_DOMAIN: &str = "identity.labelstudio";

/// The gRPC code of an error.
pub fn code(error: &AccountsError) -> Code {
    use AccountsError as E;
    match error {
        E::InvalidField { .. } | E::UserTokenRejected => Code::InvalidArgument,
        E::EmailTaken | E::UserTokenTaken | E::TokenExists => Code::AlreadyExists,
        E::TokenNotFound => Code::NotFound,
        E::InvalidCredentials
        | E::TokenInvalid
        | E::LegacyTokensDisabled
        | E::CredentialsMissing
        | E::CredentialsMalformed(_) => Code::Unauthenticated,
        E::SignupRequiresInvite
        | E::UserTokenNotAllowed
        | E::InviteInvalid
        | E::NotAMember
        | E::PersonalTokensDisabled
        | E::OwnerRequired => Code::PermissionDenied,
        E::SessionRequired => Code::FailedPrecondition,
        E::Overloaded | E::Throttled { .. } => Code::ResourceExhausted,
        E::Unavailable(_) => Code::Unavailable,
        E::Unexpected(_) => Code::Internal,
        E::UserNotFound | E::MemberNotFound => Code::NotFound,
        E::CannotRemoveSelf | E::OwnerCannotBeDeleted => Code::FailedPrecondition,
    }
}

impl From<AccountsError> for Status {
    fn from(error: AccountsError) -> Self {
        record_reason(error.reason());
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason(), ERROR_DOMAIN, HashMap::new());
        match &error {
            AccountsError::InvalidField {
                field,
                error: cause,
            } => {
                details.add_bad_request_violation(*field, cause.message.clone());
            }
            AccountsError::UserTokenRejected => {
                details.add_bad_request_violation("user_token", error.to_string());
            }
            AccountsError::Overloaded => {
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            }
            AccountsError::Throttled { retry_after } => {
                // Whole seconds, rounded up, so a client never retries too early.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                details.set_retry_info(Some(std::time::Duration::from_secs(seconds.max(1))));
            }
            AccountsError::Unavailable(cause) => {
                if let Some(cause) = cause {
                    tracing::warn!(error = ?cause, "database unavailable");
                }
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            }
            AccountsError::Unexpected(cause) => {
                tracing::error!(error = ?cause, "unexpected error");
            }
            _ => {}
        }
        Status::with_error_details(code(&error), error.to_string(), details)
    }
}

/// A request whose bytes are not a valid message of its type.
pub fn malformed_request() -> Status {
    record_reason("MALFORMED_REQUEST");
    let mut details = ErrorDetails::new();
    details.set_error_info("MALFORMED_REQUEST", ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::InvalidArgument,
        "the request is not a valid protobuf message of its type",
        details,
    )
}

/// Tags the call's span (see `trace.rs`), when it has one, with the refusal's reason.
fn record_reason(reason: &'static str) {
    tracing::Span::current().record("error.type", reason);
}
