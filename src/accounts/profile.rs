//! The account page: the caller's names, and their password. A password change goes through
//! the login's own admission and check (the same throttle on the email, the same padded cost),
//! and its outcome lands in one transaction: the new hash and credential generation, every
//! session ended, the new session, the cleared throttle and the audit row.

use super::{
    Accounts, AccountsError, Context, StartedSession,
    audit::{self, Audit},
};
use crate::{
    domain::{Account, ParseError, Password, PersonName, ThrottleKey, Username},
    store::{NewSession, PasswordChange, Principal, ProfileChange},
};

/// The names a caller sends, and the mask naming which of them change.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub first_name: String,
    pub last_name: String,
    pub username: String,
    /// Field paths; empty means every field given non-empty.
    pub mask: Vec<String>,
}

/// The fields a profile update may name.
#[derive(Debug, Clone, Copy, Default)]
struct Named {
    first_name: bool,
    last_name: bool,
    username: bool,
}

fn named(update: &ProfileUpdate) -> Result<Named, AccountsError> {
    if update.mask.is_empty() {
        return Ok(Named {
            first_name: !update.first_name.is_empty(),
            last_name: !update.last_name.is_empty(),
            username: !update.username.is_empty(),
        });
    }
    let mut named = Named::default();
    for path in &update.mask {
        match path.as_str() {
            "first_name" => named.first_name = true,
            "last_name" => named.last_name = true,
            "username" => named.username = true,
            // Label Studio answers 405 to a change of the email.
            "email" => {
                return Err(AccountsError::InvalidField {
                    field: "update_mask",
                    error: ParseError::new("EMAIL_READ_ONLY", "the email cannot be changed"),
                });
            }
            _ => {
                return Err(AccountsError::InvalidField {
                    field: "update_mask",
                    error: ParseError::new(
                        "UPDATE_MASK_INVALID",
                        "update_mask may name only first_name, last_name and username",
                    ),
                });
            }
        }
    }
    Ok(named)
}

impl Accounts {
    /// `UpdateProfile`: the caller's own names, with the signup's field rules.
    pub async fn update_profile(
        &self,
        caller: &Principal,
        update: ProfileUpdate,
        ctx: &Context,
    ) -> Result<Account, AccountsError> {
        let named = named(&update)?;
        let first_name = named
            .first_name
            .then(|| PersonName::parse(&update.first_name, "first_name"))
            .transpose()
            .map_err(AccountsError::invalid("first_name"))?;
        let last_name = named
            .last_name
            .then(|| PersonName::parse(&update.last_name, "last_name"))
            .transpose()
            .map_err(AccountsError::invalid("last_name"))?;
        let username = named
            .username
            .then(|| Username::parse(&update.username))
            .transpose()
            .map_err(AccountsError::invalid("username"))?;
        if first_name.is_none() && last_name.is_none() && username.is_none() {
            return Ok(caller.account.clone());
        }
        let user = caller.account.user.id;
        let client = ctx.client.to_string();
        let event = Audit::success("profile.update", Some(user)).event(ctx.now, &client);
        let account = self
            .db(
                ctx,
                self.store.update_profile(
                    &ProfileChange {
                        user,
                        first_name: first_name.as_ref().map(PersonName::as_str),
                        last_name: last_name.as_ref().map(PersonName::as_str),
                        username: username.as_ref().map(Username::as_str),
                    },
                    &event,
                ),
            )
            .await?;
        audit::log(&event);
        Ok(account)
    }

    /// `ChangePassword`: needs the current password, checked as a login checks it (and counted
    /// against the email's login throttle); every session ends and a new one starts.
    pub async fn change_password(
        &self,
        caller: &Principal,
        current: &str,
        new: &str,
        ctx: &Context,
    ) -> Result<StartedSession, AccountsError> {
        self.ensure_ready()?;
        let current =
            Password::for_login(current).map_err(AccountsError::invalid("current_password"))?;
        let new = Password::parse(new).map_err(AccountsError::invalid("new_password"))?;
        if current.expose() == new.expose() {
            return Err(AccountsError::InvalidField {
                field: "new_password",
                error: ParseError::new(
                    "PASSWORD_UNCHANGED",
                    "the new password must differ from the current one",
                ),
            });
        }
        let email = crate::domain::Email::parse(&caller.account.user.email)
            .map_err(|e| AccountsError::Unexpected(anyhow::anyhow!(e)))?;
        let user = caller.account.user.id;
        let address = self.address_key("login-addr", ctx);
        let email_key = ThrottleKey::new("login-email", email.as_str());
        let (record, _, admission) = self
            .verify_password(
                &email,
                &email_key,
                &address,
                &current,
                "password.change",
                ctx,
            )
            .await?;
        if record.account.user.id != user {
            // Emails are unique, so this is the caller's own account; never another's.
            admission.keep();
            return Err(AccountsError::InvalidCredentials);
        }
        let outcome = self.replace_password(&record, &new, &email_key, ctx).await;
        admission.settle(&outcome);
        outcome
    }

    /// After a verified current password: the new hash, unless the credential changed since.
    async fn replace_password(
        &self,
        record: &crate::store::LoginRecord,
        new: &Password,
        email_key: &ThrottleKey,
        ctx: &Context,
    ) -> Result<StartedSession, AccountsError> {
        let user = record.account.user.id;
        let hash = self.hasher.hash(new, ctx.deadline).await?;
        let session = self.new_session(ctx);
        let client = ctx.client.to_string();
        let event = Audit::success("password.change", Some(user)).event(ctx.now, &client);
        let changed = self
            .db(
                ctx,
                self.store.change_password(
                    &PasswordChange {
                        user,
                        credential_version: record.credential_version,
                        verified_hash: record.password_hash.as_deref().unwrap_or_default(),
                        new_hash: &hash,
                        session: &NewSession {
                            token: session.token.hash(),
                            expires_at: session.expires_at,
                        },
                        email_key,
                        now: ctx.now,
                    },
                    &event,
                ),
            )
            .await?;
        if !changed {
            self.audit(
                ctx,
                Audit::failure("password.change", "CREDENTIALS_CHANGED").user(Some(user)),
            )
            .await;
            return Err(AccountsError::InvalidCredentials);
        }
        audit::log(&event);
        Ok(session)
    }
}
