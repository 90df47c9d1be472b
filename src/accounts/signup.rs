//! New accounts: self-signup, an administrator's create, and registration through the invite
//! link. Every field is checked before any work; the account, its membership, tokens, session
//! and audit event are written together.

use super::{Accounts, AccountsError, Context, StartedSession, audit::Audit, member_of};
use crate::{
    domain::{Account, ApiToken, Email, InviteToken, Password, PersonName, UserToken, Username},
    store::{Joining, NewAccount, NewSession, Principal},
};

/// A chosen API token with fewer distinct characters than this is refused as too easy to
/// guess; a taken one gets the very same answer, so the refusal never tells whether a token
/// is someone's.
const MIN_DISTINCT_TOKEN_CHARS: usize = 4;

/// The fields of a new account as the caller sent them.
#[derive(Debug, Clone, Default)]
pub struct SignUp {
    pub email: String,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    pub username: String,
    pub user_token: String,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub account: Account,
    pub api_token: ApiToken,
    pub session: Option<StartedSession>,
}

pub(super) struct AccountFields {
    pub email: Email,
    pub password: Password,
    pub username: Username,
    pub first_name: PersonName,
    pub last_name: PersonName,
}

impl Accounts {
    /// `CreateUser`: self-signup without a caller, an administrator's create with one.
    pub async fn create_user(
        &self,
        caller: Option<&Principal>,
        input: SignUp,
        ctx: &Context,
    ) -> Result<Created, AccountsError> {
        self.ensure_ready()?;
        let user_token = match (caller, input.user_token.is_empty()) {
            (_, true) => None,
            (None, false) => return Err(AccountsError::UserTokenNotAllowed),
            (Some(_), false) => Some(
                UserToken::parse(&input.user_token)
                    .map_err(AccountsError::invalid("user_token"))?,
            ),
        };
        let fields = parse_account_fields(&input)?;
        let joining = match caller {
            None if self.policy.disable_signup_without_link => {
                return Err(AccountsError::SignupRequiresInvite);
            }
            None => Joining::FirstOrganization {
                invite_token: InviteToken::generate(),
            },
            Some(principal) => Joining::Organization(member_of(principal)?),
        };
        let event = if caller.is_some() {
            "admin_create"
        } else {
            "signup"
        };
        let key = self.address_key("token-addr", ctx);
        if user_token.is_some()
            && let Some(until) = self
                .db(ctx, self.store.blocked_until(&key, ctx.now))
                .await?
        {
            return Err(self.throttled(ctx, event, until));
        }
        if user_token.as_ref().is_some_and(too_easy_to_guess) {
            return Err(self.refuse_user_token(ctx, event, &fields.email).await);
        }
        // Administrators create accounts for someone else: no session is started for them.
        let with_session = caller.is_none();
        let email = fields.email.clone();
        let created = self
            .create(event, fields, user_token, joining, with_session, ctx)
            .await;
        match created {
            Err(AccountsError::UserTokenTaken) => {
                Err(self.refuse_user_token(ctx, event, &email).await)
            }
            other => other,
        }
    }

    /// Refuses a chosen API token, counting the refusal as a failed token guess of the
    /// client, so that choosing tokens can't be used to test whether they exist.
    async fn refuse_user_token(
        &self,
        ctx: &Context,
        event: &'static str,
        email: &Email,
    ) -> AccountsError {
        let key = self.address_key("token-addr", ctx);
        let rule = self.policy.throttle.token_per_address;
        let audit = Audit::failure(event, "USER_TOKEN_REJECTED").email(email);
        match self.record_failure(ctx, &key, rule, audit).await {
            Ok(()) => AccountsError::UserTokenRejected,
            Err(error) => error,
        }
    }

    /// `RegisterWithInvite`: joins the organization whose current invite token this is.
    pub async fn register_with_invite(
        &self,
        invite: &str,
        input: SignUp,
        ctx: &Context,
    ) -> Result<Created, AccountsError> {
        self.ensure_ready()?;
        let invite = InviteToken::parse_invite(invite).map_err(AccountsError::invalid("invite"))?;
        let fields = parse_account_fields(&input)?;
        let event = "registration";
        let key = self.address_key("invite-addr", ctx);
        let rule = self.policy.throttle.invite_per_address;
        let slot = self
            .in_flight
            .enter(&key, ctx.deadline)
            .await
            .ok_or_else(|| self.throttled(ctx, event, ctx.now))?;
        if let Some(until) = self
            .db(ctx, self.store.blocked_until(&key, ctx.now))
            .await?
        {
            return Err(self.throttled(ctx, event, until));
        }
        // Checked before hashing so a guessed token costs no hashing; checked again inside the
        // transaction so a reset that commits meanwhile still wins.
        let found = self
            .db(ctx, self.store.organization_by_invite(&invite))
            .await?
            .is_some();
        let email = fields.email.clone();
        let refused = |ctx| async move {
            let audit = Audit::failure(event, "INVITE_INVALID").email(&email);
            self.record_failure(ctx, &key, rule, audit).await?;
            Err(AccountsError::InviteInvalid)
        };
        if !found {
            // The place is held until the failure is counted, so a burst of guesses looks up
            // at most the limit plus those in flight.
            let outcome = refused(ctx).await;
            drop(slot);
            return outcome;
        }
        drop(slot);
        let created = self
            .create(event, fields, None, Joining::Invite(invite), true, ctx)
            .await;
        if matches!(created, Err(AccountsError::InviteInvalid)) {
            return refused(ctx).await;
        }
        created
    }

    /// Creates the account: refused early when the email is taken, hashed, then written with
    /// its audit event. A refusal after that point is audited on its own.
    pub(super) async fn create(
        &self,
        event: &'static str,
        fields: AccountFields,
        user_token: Option<UserToken>,
        joining: Joining,
        with_session: bool,
        ctx: &Context,
    ) -> Result<Created, AccountsError> {
        let email = fields.email.clone();
        let created = self
            .write_account(event, fields, user_token, joining, with_session, ctx)
            .await;
        if let Err(error) = &created
            && !matches!(
                error,
                AccountsError::UserTokenTaken
                    | AccountsError::InviteInvalid
                    | AccountsError::Unavailable(_)
            )
        {
            self.audit(ctx, Audit::failure(event, error.reason()).email(&email))
                .await;
        }
        created
    }

    async fn write_account(
        &self,
        event: &'static str,
        fields: AccountFields,
        user_token: Option<UserToken>,
        joining: Joining,
        with_session: bool,
        ctx: &Context,
    ) -> Result<Created, AccountsError> {
        if self.db(ctx, self.store.email_exists(&fields.email)).await? {
            return Err(AccountsError::EmailTaken);
        }
        let password_hash = self.hasher.hash(&fields.password, ctx.deadline).await?;
        let api_token = user_token.map_or_else(ApiToken::generate, ApiToken::from);
        let session = with_session.then(|| self.new_session(ctx));
        let client = ctx.client.to_string();
        let audit = Audit::success(event, None)
            .email(&fields.email)
            .event(ctx.now, &client);
        let new = NewAccount {
            email: fields.email.clone(),
            username: fields.username,
            first_name: fields.first_name,
            last_name: fields.last_name,
            password_hash: Some(password_hash),
            api_token: api_token.hash(),
            session: session.as_ref().map(|s| NewSession {
                token: s.token.hash(),
                expires_at: s.expires_at,
            }),
            joining,
            now: ctx.now,
        };
        let account = self.db(ctx, self.store.create_account(new, &audit)).await?;
        super::audit::log(&crate::store::AuditEvent {
            user_id: Some(account.user.id),
            ..audit
        });
        Ok(Created {
            account,
            api_token,
            session,
        })
    }
}

/// Too few distinct characters to be a token worth having.
fn too_easy_to_guess(token: &UserToken) -> bool {
    let mut seen = std::collections::HashSet::new();
    token.expose().chars().all(|c| {
        seen.insert(c);
        seen.len() < MIN_DISTINCT_TOKEN_CHARS
    })
}

/// Parses every field before any work is spent on the request.
pub(super) fn parse_account_fields(input: &SignUp) -> Result<AccountFields, AccountsError> {
    let email = Email::parse(&input.email).map_err(AccountsError::invalid("email"))?;
    let password = Password::parse(&input.password).map_err(AccountsError::invalid("password"))?;
    let username = Username::parse_or_default(&input.username, &email)
        .map_err(AccountsError::invalid("username"))?;
    let first_name = PersonName::parse(&input.first_name, "first_name")
        .map_err(AccountsError::invalid("first_name"))?;
    let last_name = PersonName::parse(&input.last_name, "last_name")
        .map_err(AccountsError::invalid("last_name"))?;
    Ok(AccountFields {
        email,
        password,
        username,
        first_name,
        last_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_few_distinct_characters_are_too_easy_to_guess() {
        for weak in ["aaaaa", "abababab", "abcabcabc"] {
            assert!(
                too_easy_to_guess(&UserToken::parse(weak).unwrap()),
                "{weak}"
            );
        }
        for fine in ["abcd1", "admin-token", "0123456789abcdef"] {
            assert!(
                !too_easy_to_guess(&UserToken::parse(fine).unwrap()),
                "{fine}"
            );
        }
    }
}
