//! Password login. Admission and the account come in one read-and-count, the password is
//! checked on the hashing pool (padded to a fixed cost), and the outcome lands in one write:
//! the session, the rehash, the cleared throttle and the audit row together.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Accounts, AccountsError, Context, StartedSession, audit::Audit};
use crate::{
    domain::{Account, Email, Password, ThrottleKey, ThrottleRule},
    password::Verdict,
    store::{LoginAdmission, LoginAttempt, LoginRecord, LoginSuccess, NewSession, Store},
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
                return Err(self.throttled(ctx, "login", until));
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
        let (record, verdict, admission) = self
            .verify_password(&email, &email_key, &address, &password, "login", ctx)
            .await?;
        let outcome = self
            .start_session(&email, &email_key, &password, record, verdict, ctx)
            .await;
        admission.settle(&outcome);
        outcome
    }

    /// Checks a password of the account with `email` as a login does: admitted on the email's
    /// throttle (counted before the check), checked on the hashing pool at a padded cost, and
    /// on a mismatch counted on the client's address and audited as `event`. The account and
    /// the verdict when the password is right, with the admission still held: the caller
    /// settles it once the outcome is known (see [`Admission`]).
    pub(super) async fn verify_password(
        &self,
        email: &Email,
        email_key: &ThrottleKey,
        address: &ThrottleKey,
        password: &Password,
        event: &'static str,
        ctx: &Context,
    ) -> Result<(LoginRecord, Verdict, Admission), AccountsError> {
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
        let (record, blocking) = match admission {
            LoginAdmission::Admitted { record, blocking } => (record, blocking),
            LoginAdmission::Blocked { until } => {
                return Err(self.throttled(ctx, event, until));
            }
        };
        // From here the attempt counts against the email until it is judged: whatever ends
        // it otherwise (an error, a deadline, the client cancelling the call) gives it back.
        let admission = Admission::new(self, email_key, blocking);
        let stored = record.as_ref().and_then(|r| r.password_hash.as_deref());
        let verdict = match self
            .hasher
            .verify_with_ticket(ticket, stored, password, ctx.deadline)
            .await
        {
            Ok(verdict) => verdict,
            // Never checked: dropping the admission gives it back.
            Err(error) => return Err(error.into()),
        };
        match (record, verdict) {
            (Some(record), Verdict::Match | Verdict::MatchNeedsRehash) if record.is_active => {
                Ok((*record, verdict, admission))
            }
            (record, _) => {
                // Judged wrong: the attempt stays counted against the email.
                admission.keep();
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
}

/// A password attempt counted against its email before the check, held until the attempt is
/// judged. A wrong password or a success ([`Admission::settle`], [`Admission::keep`]) keeps
/// it: the failure stays counted, or the success's write cleared the count. Anything else that
/// ends the attempt — an error, an overload, a deadline, or the client cancelling the call,
/// which drops the request's future mid-way — gives back exactly this one attempt, on a task of
/// its own so that it happens even when nothing awaits it.
#[must_use = "dropping an admission gives the attempt back"]
pub(super) struct Admission {
    give_back: Option<GiveBack>,
}

/// What giving an attempt back needs: the key it was counted on, and the block it set.
struct GiveBack {
    store: Arc<dyn Store>,
    key: ThrottleKey,
    rule: ThrottleRule,
    blocking: Option<DateTime<Utc>>,
}

impl Admission {
    fn new(accounts: &Accounts, email_key: &ThrottleKey, blocking: Option<DateTime<Utc>>) -> Self {
        Self {
            give_back: Some(GiveBack {
                store: Arc::clone(&accounts.store),
                key: email_key.clone(),
                rule: accounts.policy.throttle.login_per_email,
                blocking,
            }),
        }
    }

    /// The attempt was judged: it stays as the store recorded it.
    pub(super) fn keep(mut self) {
        self.give_back = None;
    }

    /// Keeps the attempt when the outcome judged the credentials (a success, or a refusal as
    /// invalid credentials, such as a credential changed meanwhile); gives it back otherwise.
    pub(super) fn settle<T>(self, outcome: &Result<T, AccountsError>) {
        if matches!(outcome, Ok(_) | Err(AccountsError::InvalidCredentials)) {
            self.keep();
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some(GiveBack {
            store,
            key,
            rule,
            blocking,
        }) = self.give_back.take()
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("throttle give-back skipped: no runtime");
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = store.give_back(&key, rule, blocking).await {
                tracing::warn!(%error, "throttle give-back failed");
            }
        });
    }
}
