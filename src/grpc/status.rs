//! The one place errors become `tonic::Status`, with `google.rpc` details. Internal causes are
//! logged here and never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::accounts::AccountsError;

pub const ERROR_DOMAIN: &str = "identity.labelstudio";

impl From<AccountsError> for Status {
    fn from(error: AccountsError) -> Self {
        use AccountsError as E;
        let message = error.to_string();
        let (code, reason) = match &error {
            E::InvalidField {
                field,
                error: cause,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(cause.reason, ERROR_DOMAIN, HashMap::new());
                details.add_bad_request_violation(*field, cause.message.clone());
                return Status::with_error_details(Code::InvalidArgument, message, details);
            }
            E::EmailTaken => (Code::AlreadyExists, "EMAIL_TAKEN"),
            E::UserTokenTaken => (Code::AlreadyExists, "USER_TOKEN_TAKEN"),
            E::InvalidCredentials => (Code::Unauthenticated, "INVALID_CREDENTIALS"),
            E::TokenInvalid => (Code::Unauthenticated, "TOKEN_INVALID"),
            E::CredentialsMissing => (Code::Unauthenticated, "CREDENTIALS_MISSING"),
            E::CredentialsMalformed(_) => (Code::Unauthenticated, "CREDENTIALS_MALFORMED"),
            E::SignupRequiresInvite => (Code::PermissionDenied, "SIGNUP_REQUIRES_INVITE"),
            E::UserTokenNotAllowed => (Code::PermissionDenied, "USER_TOKEN_NOT_ALLOWED"),
            E::InviteInvalid => (Code::PermissionDenied, "INVITE_INVALID"),
            E::NotAMember => (Code::PermissionDenied, "NOT_A_MEMBER"),
            E::SessionRequired => (Code::FailedPrecondition, "SESSION_REQUIRED"),
            E::Overloaded => {
                let mut details = ErrorDetails::new();
                details.set_error_info("OVERLOADED", ERROR_DOMAIN, HashMap::new());
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                return Status::with_error_details(Code::ResourceExhausted, message, details);
            }
            E::Unavailable(cause) => {
                if let Some(cause) = cause {
                    tracing::warn!(error = ?cause, "database unavailable");
                }
                (Code::Unavailable, "UNAVAILABLE")
            }
            E::Unexpected(cause) => {
                tracing::error!(error = ?cause, "unexpected error");
                (Code::Internal, "INTERNAL")
            }
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        Status::with_error_details(code, message, details)
    }
}
