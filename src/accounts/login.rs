//! Password login. Admission and the account come in one read-and-count, the password is
//! checked on the hashing pool (padded to a fixed cost), and the outcome lands in one write:
//! the session, the rehash, the cleared throttle and the audit row together.

use super::{Accounts, AccountsError, Context, StartedSession, audit::Audit};
use crate::{
    domain::{Account, Email, Password, ThrottleKey},
    password::Verdict,
    store::{LoginAdmission, LoginAttempt, LoginRecord, LoginSuccess, NewSession},
};

impl Accounts {
    /// `Authenticate` with a password: starts a session. Unknown emails, wrong passwords and
    /// inactive users all spend one hash and fail the same way. Throttled per email (known or
    /// not) and per client address before any hashing.
    pub async fn authenticate_password(
        &self,
        email: &str,
        password: &str,
        ctx: &Context,
    ) -> Result<(Account, StartedSession), AccountsError> {
        self.ensure_ready()?;
        let address = self.address_key("login-addr", ctx);
        // A malformed email or an empty password can't match any account: refuse it as a
        // failed login, so the answer doesn't tell which input was wrong.
        let (Ok(email), Ok(password)) = (Email::parse(email), Password::for_login(password)) else {
            if let Some(until) = self
                .db(ctx, self.store.blocked_until(&address, ctx.now))
                .await?
            {
                return Err(self.throttled(ctx, "login", &address, until));
            }
            self.record_failure(
                ctx,
                &address,
                self.policy.throttle.login_per_address,
                Audit::failure("login", "INVALID_CREDENTIALS"),
            )
            .await?;
            return Err(AccountsError::InvalidCredentials);
        };
        let email_key = ThrottleKey::new("login-email", email.as_str());
        let (record, verdict) = self
            .verify_password(&email, &email_key, &address, &password, "login", ctx)
            .await?;
        match self
            .start_session(&email, &email_key, &password, record, verdict, ctx)
            .await
        {
            Err(error) if !matches!(error, AccountsError::InvalidCredentials) => {
                self.give_back(&email_key).await;
                Err(error)
            }
            outcome => outcome,
        }
    }

    /// Checks a password of the account with `email` as a login does: admitted on the email's
    /// throttle (counted before the check), checked on the hashing pool at a padded cost, and
    /// on a mismatch counted on the client's address and audited as `event`. The account and
    /// the verdict when the password is right.
    pub(super) async fn verify_password(
        &self,
        email: &Email,
        email_key: &ThrottleKey,
        address: &ThrottleKey,
        password: &Password,
        event: &'static str,
        ctx: &Context,
    ) -> Result<(LoginRecord, Verdict), AccountsError> {
        let email_rule = self.policy.throttle.login_per_email;
        // A place in the hashing queue first: a login the pool can't take is refused before
        // it costs a database write, and an overload never counts as a failed attempt.
        let ticket = self.hasher.ticket()?;
        let admission = self
            .db(
                ctx,
                self.store.login_admit(&LoginAttempt {
                    email,
                    email_key,
                    email_rule,
                    address_key: address,
                    now: ctx.now,
                }),
            )
            .await?;
        let record = match admission {
            LoginAdmission::Admitted(record) => record,
            LoginAdmission::Blocked { until } => {
                return Err(self.throttled(ctx, event, email_key, until));
            }
        };
        let stored = record.as_ref().and_then(|r| r.password_hash.as_deref());
        let verdict = match self
            .hasher
            .verify_with_ticket(ticket, stored, password, ctx.deadline)
            .await
        {
            Ok(verdict) => verdict,
            Err(error) => {
                // Never checked: the attempt doesn't count against the email.
                self.give_back(email_key).await;
                return Err(error.into());
            }
        };
        match (record, verdict) {
            (Some(record), Verdict::Match | Verdict::MatchNeedsRehash) if record.is_active => {
                Ok((*record, verdict))
            }
            (record, _) => {
                let audit = Audit::failure(event, "INVALID_CREDENTIALS")
                    .email(email)
                    .user(record.map(|r| r.account.user.id));
                self.record_failure(ctx, address, self.policy.throttle.login_per_address, audit)
                    .await?;
                Err(AccountsError::InvalidCredentials)
            }
        }
    }

    /// After a verified password: the session, unless a reset changed the credential since it
    /// was read.
    async fn start_session(
        &self,
        email: &Email,
        email_key: &ThrottleKey,
        password: &Password,
        record: LoginRecord,
        verdict: Verdict,
        ctx: &Context,
    ) -> Result<(Account, StartedSession), AccountsError> {
        let user = record.account.user.id;
        let verified_hash = record.password_hash.as_deref().unwrap_or_default();
        let new_hash = if verdict == Verdict::MatchNeedsRehash {
            match self.hasher.hash(password, ctx.deadline).await {
                Ok(hash) => Some(hash),
                // The login itself succeeded; the upgrade waits for the next one.
                Err(error) => {
                    tracing::warn!(user, %error, "password re-hash skipped");
                    None
                }
            }
        } else {
            None
        };
        let session = self.new_session(ctx);
        let client = ctx.client.to_string();
        let started = self
            .db(
                ctx,
                self.store.login_succeeded(&LoginSuccess {
                    user,
                    credential_version: record.credential_version,
                    verified_hash,
                    new_hash: new_hash.as_deref(),
                    session: &NewSession {
                        token: session.token.hash(),
                        expires_at: session.expires_at,
                    },
                    email_key,
                    email: email.as_str(),
                    client: &client,
                    now: ctx.now,
                }),
            )
            .await?;
        let audit = if started {
            Audit::success("login", Some(user))
        } else {
            Audit::failure("login", "CREDENTIALS_CHANGED").user(Some(user))
        };
        super::audit::log(&audit.email(email).event(ctx.now, &client));
        if !started {
            return Err(AccountsError::InvalidCredentials);
        }
        if !password.meets_policy() {
            // Label Studio set passwords of any length; this one would be refused if set now.
            tracing::info!(
                user,
                "password below the current policy; a reset is advised"
            );
        }
        Ok((record.account, session))
    }

    /// Takes back an admission whose password was never judged.
    pub(super) async fn give_back(&self, email_key: &ThrottleKey) {
        let rule = self.policy.throttle.login_per_email;
        if let Err(error) = self.store.give_back(email_key, rule).await {
            tracing::warn!(%error, "throttle give-back failed");
        }
    }
}
