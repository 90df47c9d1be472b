//! The use cases: sign up, log in, tokens, invite links, bootstrap and password reset, one file
//! each. Inputs arrive as plain strings and leave as domain types; the transport stays outside.
//! This file holds what they share: the policy, the caller's context, the audit trail and the
//! throttle keys.

mod access_tokens;
mod audit;
mod bootstrap;
mod error;
mod in_flight;
mod invites;
mod login;
mod maintenance;
mod members;
mod organization;
mod passwords;
mod personal_tokens;
mod profile;
mod removal;
mod signup;
mod tokens;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use tokio::time::Instant;

pub use access_tokens::{IssuedAccess, KEY_RELOAD_INTERVAL};
pub use bootstrap::{BootstrapAccount, Bootstrapped};
pub use error::AccountsError;
pub use members::{CurrentUser, MemberSearch, MembersPage};
pub use personal_tokens::{IssuedPersonalToken, MAX_TTL_DAYS, SettingsUpdate};
pub use profile::ProfileUpdate;
pub use signup::{Created, SignUp};

use crate::{
    domain::{InviteToken, SessionToken, ThrottleKey, ThrottleRule},
    password::PasswordHasher,
    store::{Store, StoreError},
};

/// How long before the caller's deadline a store call gives up, so that the refusal still
/// reaches the caller in time.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(25);

/// Rules that come from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub disable_signup_without_link: bool,
    pub session_ttl: Duration,
    /// A session unused for this long has ended (Label Studio's MAX_TIME_BETWEEN_ACTIVITY).
    pub session_max_idle: Duration,
    pub public_url: Option<String>,
    pub throttle: ThrottlePolicy,
    /// Audit rows older than this are deleted.
    pub audit_retention: Duration,
    /// How long an access token lives.
    pub access_token_ttl: Duration,
}

/// How failures slow down further attempts.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failed password logins per email, whether or not an account has it.
    pub login_per_email: ThrottleRule,
    /// Failed password logins per client address.
    pub login_per_address: ThrottleRule,
    /// Failed token authentications per client address.
    pub token_per_address: ThrottleRule,
    /// Failed invite tokens per client address.
    pub invite_per_address: ThrottleRule,
    /// Token and invite checks one client address may have in flight on one replica: a burst
    /// of guesses checks at most the limit plus this many before the block stops it.
    pub in_flight_per_address: usize,
    /// IPv6 clients are throttled per network of this many leading bits.
    pub ipv6_prefix_length: u8,
}

/// Who is calling and until when: passed into every use case.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: DateTime<Utc>,
    pub deadline: Option<Instant>,
    /// The client's address (the nearest untrusted hop behind trusted gateways).
    pub client: IpAddr,
}

impl Context {
    /// A context for work the service does on its own (bootstrap, commands).
    pub fn internal() -> Self {
        Self {
            now: now(),
            deadline: None,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Credentials a caller presented in request metadata.
#[derive(Debug, Clone)]
pub enum Credentials {
    ApiToken(String),
    Session(String),
    /// `Bearer` with a JWT-shaped token: an access token, checked without the database.
    AccessToken(String),
}

/// A session just started: the token is shown once.
#[derive(Debug, Clone)]
pub struct StartedSession {
    pub token: SessionToken,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct InviteLink {
    pub token: InviteToken,
    pub url: String,
}

/// The current time, at the microsecond precision both stores keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `time + duration`, saturating at the end of representable time instead of panicking.
pub(crate) fn later(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    time.checked_add_signed(duration)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `time - duration`, saturating at the start of representable time.
pub(crate) fn earlier(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    time.checked_sub_signed(duration)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    policy: Arc<Policy>,
    /// False until migrations and the bootstrap ran: calls before that are refused as
    /// unavailable.
    ready: Arc<AtomicBool>,
    /// False while the readiness check finds the database away: calls fail fast meanwhile.
    database_up: Arc<AtomicBool>,
    /// Refusals of throttled clients, written as one audit row per client and window.
    refusals: Arc<audit::Refusals>,
    /// Token and invite checks in flight, per client address.
    in_flight: Arc<in_flight::InFlight>,
    /// Signs member listings' page tokens; its key is read from the store on first use.
    page_tokens: Arc<tokio::sync::OnceCell<crate::domain::PageTokens>>,
    /// The signing keys, shared by every replica through the database.
    keys: Arc<access_tokens::KeyRing>,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, hasher: PasswordHasher, policy: Policy) -> Self {
        let in_flight = in_flight::InFlight::new(policy.throttle.in_flight_per_address);
        Self {
            store,
            hasher,
            policy: Arc::new(policy),
            ready: Arc::new(AtomicBool::new(false)),
            database_up: Arc::new(AtomicBool::new(true)),
            refusals: Arc::new(audit::Refusals::default()),
            in_flight: Arc::new(in_flight),
            page_tokens: Arc::default(),
            keys: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Told by the readiness check whether the database answers.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Release);
    }

    fn ensure_ready(&self) -> Result<(), AccountsError> {
        if self.ready.load(Ordering::Acquire) && self.database_up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(AccountsError::Unavailable(None))
        }
    }

    /// Runs a store call within the caller's deadline: a database that is locked or slow
    /// answers `UNAVAILABLE` in time instead of holding the call past it.
    async fn db<T>(
        &self,
        ctx: &Context,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, AccountsError> {
        match ctx.deadline {
            // A little before the deadline, so the answer reaches the caller before it gives up.
            Some(deadline) => match tokio::time::timeout_at(
                deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline),
                call,
            )
            .await
            {
                Ok(outcome) => Ok(outcome?),
                Err(_) => Err(AccountsError::Unavailable(None)),
            },
            None => Ok(call.await?),
        }
    }

    /// Writes a security event to the audit trail and the log. An audit write that fails is
    /// logged, not fatal: the event itself already happened.
    async fn audit(&self, ctx: &Context, record: audit::Audit<'_>) {
        let client = ctx.client.to_string();
        let event = record.event(ctx.now, &client);
        audit::log(&event);
        if let Err(error) = self.db(ctx, self.store.audit(&event)).await {
            tracing::warn!(%error, event = record.event, "audit write failed");
        }
    }

    /// A refusal of a throttled client: no database write and no log line of its own, but
    /// counted into the client's aggregated audit row.
    fn throttled(&self, ctx: &Context, event: &'static str, until: DateTime<Utc>) -> AccountsError {
        self.refusals.count(event, ctx.client);
        AccountsError::Throttled {
            retry_after: (until - ctx.now).to_std().unwrap_or_default(),
        }
    }

    /// Counts a failure on an address key together with its audit event.
    async fn record_failure(
        &self,
        ctx: &Context,
        key: &ThrottleKey,
        rule: ThrottleRule,
        record: audit::Audit<'_>,
    ) -> Result<(), AccountsError> {
        let client = ctx.client.to_string();
        let event = record.event(ctx.now, &client);
        audit::log(&event);
        self.db(
            ctx,
            self.store.record_failure(&crate::store::Failure {
                key,
                rule,
                audit: &event,
            }),
        )
        .await
    }

    /// An invalid token: counted on the client's token throttle with its audit event, and
    /// refused.
    async fn token_refused(&self, ctx: &Context, event: &'static str) -> AccountsError {
        let key = self.address_key("token-addr", ctx);
        let rule = self.policy.throttle.token_per_address;
        match self
            .record_failure(
                ctx,
                &key,
                rule,
                audit::Audit::failure(event, "TOKEN_INVALID"),
            )
            .await
        {
            Ok(()) => AccountsError::TokenInvalid,
            Err(error) => error,
        }
    }

    /// The throttle key of the client's address for one kind of attempt.
    fn address_key(&self, scope: &str, ctx: &Context) -> ThrottleKey {
        ThrottleKey::new(
            scope,
            &crate::domain::throttle_subject(ctx.client, self.policy.throttle.ipv6_prefix_length),
        )
    }

    fn link(&self, token: InviteToken) -> InviteLink {
        let url = token.url(self.policy.public_url.as_deref());
        InviteLink { token, url }
    }

    fn new_session(&self, ctx: &Context) -> StartedSession {
        StartedSession {
            token: SessionToken::generate(),
            expires_at: later(ctx.now, self.policy.session_ttl),
        }
    }
}

/// The organization the caller owns; refused when they act in none or don't own it.
fn owner_of(
    caller: &crate::store::Principal,
) -> Result<&crate::domain::Organization, AccountsError> {
    let organization = caller
        .account
        .organization
        .as_ref()
        .ok_or(AccountsError::NotAMember)?;
    if organization.created_by_user_id == Some(caller.account.user.id) {
        Ok(organization)
    } else {
        Err(AccountsError::OwnerRequired)
    }
}

/// The organization the caller acts in; refused when they are a member of none.
fn member_of(caller: &crate::store::Principal) -> Result<i64, AccountsError> {
    caller
        .account
        .organization
        .as_ref()
        .map(|organization| organization.id)
        .ok_or(AccountsError::NotAMember)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(later(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(earlier(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(later(now, Duration::seconds(1)), now + Duration::seconds(1));
    }
}
