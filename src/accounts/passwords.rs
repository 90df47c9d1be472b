//! Setting a password from outside the API: the `reset-password` command.

use super::{Accounts, AccountsError, Context, audit::Audit};
use crate::domain::{Email, Password};

impl Accounts {
    /// Sets a new password for the account with this email and ends its sessions; a login
    /// verified against the old password but not yet finished starts no session. False when
    /// no account has the email.
    pub async fn reset_password(&self, email: &str, password: &str) -> Result<bool, AccountsError> {
        self.ensure_ready()?;
        let email = Email::parse(email).map_err(AccountsError::invalid("username"))?;
        let password = Password::parse(password).map_err(AccountsError::invalid("password"))?;
        let hash = self.hasher.hash(&password, None).await?;
        let user = self.store.reset_password(&email, &hash).await?;
        let audit = match user {
            Some(user) => Audit::success("password_reset", Some(user)),
            None => Audit::failure("password_reset", "NO_SUCH_ACCOUNT"),
        };
        self.audit(&Context::internal(), audit.email(&email)).await;
        Ok(user.is_some())
    }
}
