//! The account created at start-up from `--username/--password/--user-token` or Label Studio's
//! variables, as Label Studio's own flags do. Idempotent: an existing account is left alone.

use super::{Accounts, AccountsError, Context, signup::AccountFields};
use crate::{
    domain::{Email, InviteToken, Password, PersonName, UserToken, Username},
    store::Joining,
};

/// What a bootstrap at start-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrapped {
    Created,
    AlreadyExists,
}

/// The bootstrap account, checked before anything starts.
#[derive(Debug, Clone)]
pub struct BootstrapAccount {
    pub email: Email,
    pub password: Password,
    pub user_token: Option<UserToken>,
}

impl BootstrapAccount {
    pub fn parse(
        username: Option<&str>,
        password: Option<&str>,
        user_token: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        let username = username.filter(|u| !u.is_empty());
        let password = password.filter(|p| !p.is_empty());
        let user_token = user_token.filter(|t| !t.is_empty());
        let (username, password) = match (username, password) {
            (None, None) => {
                anyhow::ensure!(
                    user_token.is_none(),
                    "LABEL_STUDIO_USER_TOKEN (--user-token) needs LABEL_STUDIO_USERNAME and \
                     LABEL_STUDIO_PASSWORD"
                );
                return Ok(None);
            }
            (Some(username), Some(password)) => (username, password),
            (Some(_), None) => anyhow::bail!(
                "LABEL_STUDIO_USERNAME (--username) is set but LABEL_STUDIO_PASSWORD (--password) is not"
            ),
            (None, Some(_)) => anyhow::bail!(
                "LABEL_STUDIO_PASSWORD (--password) is set but LABEL_STUDIO_USERNAME (--username) is not"
            ),
        };
        let email = Email::parse(username)
            .map_err(|e| anyhow::anyhow!("bootstrap username (LABEL_STUDIO_USERNAME): {e}"))?;
        let password = Password::parse(password)
            .map_err(|e| anyhow::anyhow!("bootstrap password (LABEL_STUDIO_PASSWORD): {e}"))?;
        let user_token = user_token
            .map(UserToken::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("bootstrap token (LABEL_STUDIO_USER_TOKEN): {e}"))?;
        Ok(Some(Self {
            email,
            password,
            user_token,
        }))
    }
}

impl Accounts {
    /// Creates the bootstrap account unless it exists; runs on every start, after the
    /// migrations and before the service reports itself ready, so no signup can take its email
    /// first.
    pub async fn bootstrap(
        &self,
        account: &BootstrapAccount,
    ) -> Result<Bootstrapped, AccountsError> {
        if self.store.email_exists(&account.email).await? {
            return Ok(Bootstrapped::AlreadyExists);
        }
        let fields = AccountFields {
            username: Username::parse_or_default("", &account.email)
                .map_err(AccountsError::invalid("username"))?,
            email: account.email.clone(),
            password: account.password.clone(),
            first_name: PersonName::parse("", "first_name")
                .map_err(AccountsError::invalid("first_name"))?,
            last_name: PersonName::parse("", "last_name")
                .map_err(AccountsError::invalid("last_name"))?,
        };
        let joining = Joining::FirstOrganization {
            invite_token: InviteToken::generate(),
        };
        let created = self
            .create(
                "bootstrap",
                fields,
                account.user_token.clone(),
                joining,
                false,
                &Context::internal(),
            )
            .await;
        match created {
            Ok(_) => Ok(Bootstrapped::Created),
            // Another replica bootstrapped the same account a moment earlier.
            Err(AccountsError::EmailTaken) => Ok(Bootstrapped::AlreadyExists),
            Err(other) => Err(other),
        }
    }
}
