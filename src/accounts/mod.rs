//! The use cases: sign up, authenticate, invite links, tokens, bootstrap and password reset.
//! Inputs arrive as plain strings and leave as domain types; the transport stays outside.

mod error;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use tokio::time::Instant;

pub use error::AccountsError;

use crate::{
    domain::{
        Account, ApiToken, Email, InviteToken, Password, PersonName, SessionToken, ThrottleKey,
        ThrottleRule, TokenHash, UserToken, Username,
    },
    password::{PasswordHasher, Verdict},
    store::{Admission, AuditEvent, Joining, NewAccount, NewSession, Principal, Store, TokenKind},
};

/// Rules that come from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub disable_signup_without_link: bool,
    pub session_ttl: Duration,
    pub public_url: Option<String>,
    pub throttle: ThrottlePolicy,
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
    /// IPv6 clients are throttled per network of this many leading bits.
    pub ipv6_prefix_length: u8,
}

/// Who is calling and until when: passed into every use case.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: DateTime<Utc>,
    pub deadline: Option<Instant>,
    /// The client's address (the first hop behind a trusted gateway).
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
}

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

/// A session just started: the token is shown once.
#[derive(Debug, Clone)]
pub struct StartedSession {
    pub token: SessionToken,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub account: Account,
    pub api_token: ApiToken,
    pub session: Option<StartedSession>,
}

#[derive(Debug, Clone)]
pub struct InviteLink {
    pub token: InviteToken,
    pub url: String,
}

/// What a bootstrap at start-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrapped {
    Created,
    AlreadyExists,
}

/// The current time, at the microsecond precision both stores keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The audit record of one security event, also logged as a structured line.
struct Audit<'a> {
    event: &'static str,
    user_id: Option<i64>,
    email: Option<&'a Email>,
    outcome: Result<(), &'static str>,
}

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    policy: Arc<Policy>,
    /// False until migrations ran: calls before that are refused as unavailable.
    ready: Arc<AtomicBool>,
    /// False while the readiness check finds the database away: calls fail fast meanwhile.
    database_up: Arc<AtomicBool>,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, hasher: PasswordHasher, policy: Policy) -> Self {
        Self {
            store,
            hasher,
            policy: Arc::new(policy),
            ready: Arc::new(AtomicBool::new(false)),
            database_up: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
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

    /// Writes a security event to the audit trail and the log. An audit write that fails is
    /// logged, not fatal: the event itself already happened.
    async fn audit(&self, ctx: &Context, record: Audit<'_>) {
        let (outcome, reason) = match record.outcome {
            Ok(()) => ("success", None),
            Err(reason) => ("failure", Some(reason)),
        };
        let client = ctx.client.to_string();
        tracing::info!(
            target: "audit",
            event = record.event,
            outcome,
            reason,
            user = record.user_id,
            client = %client,
            "security event"
        );
        let event = AuditEvent {
            at: ctx.now,
            event: record.event,
            outcome,
            user_id: record.user_id,
            email: record.email.map(Email::as_str),
            client: &client,
            reason,
        };
        if let Err(error) = self.store.audit(&event).await {
            tracing::warn!(%error, event = record.event, "audit write failed");
        }
    }

    /// Counts an attempt on the throttle, refusing it while any key is blocked.
    async fn admit(
        &self,
        ctx: &Context,
        event: &'static str,
        keys: &[(ThrottleKey, ThrottleRule)],
        email: Option<&Email>,
    ) -> Result<(), AccountsError> {
        match self.store.throttle_admit(keys, ctx.now).await? {
            Admission::Admitted => Ok(()),
            Admission::Blocked { until } => Err(self.throttled(ctx, event, email, until).await),
        }
    }

    async fn throttled(
        &self,
        ctx: &Context,
        event: &'static str,
        email: Option<&Email>,
        until: DateTime<Utc>,
    ) -> AccountsError {
        self.audit(
            ctx,
            Audit {
                event,
                user_id: None,
                email,
                outcome: Err("THROTTLED"),
            },
        )
        .await;
        AccountsError::Throttled {
            retry_after: (until - ctx.now).to_std().unwrap_or_default(),
        }
    }

    fn address_key(&self, scope: &str, ctx: &Context) -> ThrottleKey {
        ThrottleKey::new(
            scope,
            &crate::domain::throttle_subject(ctx.client, self.policy.throttle.ipv6_prefix_length),
        )
    }

    /// Looks a token up with the client's token throttle; counts a failure when it is unknown.
    async fn lookup_token(&self, token: &str, ctx: &Context) -> Result<Principal, AccountsError> {
        self.ensure_ready()?;
        let key = self.address_key("token-addr", ctx);
        let rule = self.policy.throttle.token_per_address;
        let lookup = if token.is_empty() || token.len() > 512 {
            None
        } else {
            Some(
                self.store
                    .principal(&TokenHash::of(token), Some(&key), ctx.now)
                    .await?,
            )
        };
        match lookup {
            Some(lookup) if lookup.blocked_until.is_some_and(|until| until > ctx.now) => {
                let until = lookup.blocked_until.unwrap_or(ctx.now);
                Err(self.throttled(ctx, "token_auth", None, until).await)
            }
            Some(crate::store::TokenLookup {
                principal: Some(principal),
                ..
            }) => Ok(principal),
            _ => {
                self.admit(ctx, "token_auth", &[(key, rule)], None).await?;
                self.audit(
                    ctx,
                    Audit {
                        event: "token_auth",
                        user_id: None,
                        email: None,
                        outcome: Err("TOKEN_INVALID"),
                    },
                )
                .await;
                Err(AccountsError::TokenInvalid)
            }
        }
    }

    /// The principal behind the caller's credentials.
    pub async fn caller(
        &self,
        credentials: &Credentials,
        ctx: &Context,
    ) -> Result<Principal, AccountsError> {
        let (token, kind) = match credentials {
            Credentials::ApiToken(token) => (token, TokenKind::Api),
            Credentials::Session(token) => (token, TokenKind::Session),
        };
        let principal = self.lookup_token(token, ctx).await?;
        if principal.kind == kind {
            Ok(principal)
        } else {
            Err(AccountsError::TokenInvalid)
        }
    }

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
        // Administrators create accounts for someone else: no session is started for them.
        let with_session = caller.is_none();
        let email = fields.email.clone();
        let created = self
            .create(fields, user_token, joining, with_session, ctx)
            .await;
        let event = if caller.is_some() {
            "admin_create"
        } else {
            "signup"
        };
        self.audit_created(ctx, event, &email, &created).await;
        created
    }

    async fn audit_created(
        &self,
        ctx: &Context,
        event: &'static str,
        email: &Email,
        created: &Result<Created, AccountsError>,
    ) {
        let outcome = match created {
            Ok(_) => Ok(()),
            Err(error) => Err(error.reason()),
        };
        let user_id = created.as_ref().ok().map(|c| c.account.user.id);
        self.audit(
            ctx,
            Audit {
                event,
                user_id,
                email: Some(email),
                outcome,
            },
        )
        .await;
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
        let key = self.address_key("invite-addr", ctx);
        if let Some(until) = self.store.throttle_blocked_until(&key, ctx.now).await? {
            return Err(self
                .throttled(ctx, "registration", Some(&fields.email), until)
                .await);
        }
        // Checked before hashing so a guessed token costs no hashing; checked again inside the
        // transaction so a reset that commits meanwhile still wins.
        let email = fields.email.clone();
        let created = if self.store.organization_by_invite(&invite).await?.is_none() {
            Err(AccountsError::InviteInvalid)
        } else {
            self.create(fields, None, Joining::Invite(invite), true, ctx)
                .await
        };
        if matches!(created, Err(AccountsError::InviteInvalid)) {
            let rule = self.policy.throttle.invite_per_address;
            self.admit(ctx, "registration", &[(key, rule)], Some(&email))
                .await?;
        }
        self.audit_created(ctx, "registration", &email, &created)
            .await;
        created
    }

    async fn create(
        &self,
        fields: AccountFields,
        user_token: Option<UserToken>,
        joining: Joining,
        with_session: bool,
        ctx: &Context,
    ) -> Result<Created, AccountsError> {
        if self.store.email_exists(&fields.email).await? {
            return Err(AccountsError::EmailTaken);
        }
        let password_hash = self.hasher.hash(&fields.password, ctx.deadline).await?;
        let api_token = user_token.map_or_else(ApiToken::generate, ApiToken::from);
        let session = with_session.then(|| StartedSession {
            token: SessionToken::generate(),
            expires_at: ctx.now + self.policy.session_ttl,
        });
        let account = self
            .store
            .create_account(NewAccount {
                email: fields.email,
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
            })
            .await?;
        Ok(Created {
            account,
            api_token,
            session,
        })
    }

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
        let throttle = self.policy.throttle;
        let address = (
            self.address_key("login-addr", ctx),
            throttle.login_per_address,
        );
        // A malformed email or an impossible password can't match any account: refuse it
        // as a failed login, so the answer doesn't tell which input was wrong.
        let (Ok(email), Ok(password)) = (Email::parse(email), Password::parse(password)) else {
            self.admit(ctx, "login", &[address], None).await?;
            self.audit(
                ctx,
                Audit {
                    event: "login",
                    user_id: None,
                    email: None,
                    outcome: Err("INVALID_CREDENTIALS"),
                },
            )
            .await;
            return Err(AccountsError::InvalidCredentials);
        };
        let per_email = (
            ThrottleKey::new("login-email", email.as_str()),
            throttle.login_per_email,
        );
        // A place in the hashing queue first: a login the pool can't take is refused before
        // it costs a database write, and an overload never counts as a failed attempt.
        let ticket = self.hasher.ticket()?;
        self.admit(
            ctx,
            "login",
            &[per_email.clone(), address.clone()],
            Some(&email),
        )
        .await?;
        let record = self.store.login_record(&email).await?;
        let stored = record.as_ref().and_then(|r| r.password_hash.as_deref());
        let verdict = self
            .hasher
            .verify_with_ticket(ticket, stored, &password, ctx.deadline)
            .await?;
        let record = match (record, verdict) {
            (Some(record), Verdict::Match | Verdict::MatchNeedsRehash) if record.is_active => {
                record
            }
            (record, _) => {
                self.audit(
                    ctx,
                    Audit {
                        event: "login",
                        user_id: record.map(|r| r.account.user.id),
                        email: Some(&email),
                        outcome: Err("INVALID_CREDENTIALS"),
                    },
                )
                .await;
                return Err(AccountsError::InvalidCredentials);
            }
        };
        self.store
            .throttle_succeeded(&[per_email.0], &[address])
            .await?;
        let user = record.account.user.id;
        if verdict == Verdict::MatchNeedsRehash {
            match self.hasher.hash(&password, ctx.deadline).await {
                Ok(hash) => self.store.set_password_hash(user, &hash).await?,
                // The login itself succeeded; the upgrade waits for the next one.
                Err(error) => tracing::warn!(user, %error, "password re-hash skipped"),
            }
        }
        let session = StartedSession {
            token: SessionToken::generate(),
            expires_at: ctx.now + self.policy.session_ttl,
        };
        self.store
            .create_session(
                user,
                &NewSession {
                    token: session.token.hash(),
                    expires_at: session.expires_at,
                },
                ctx.now,
            )
            .await?;
        self.audit(
            ctx,
            Audit {
                event: "login",
                user_id: Some(user),
                email: Some(&email),
                outcome: Ok(()),
            },
        )
        .await;
        Ok((record.account, session))
    }

    /// `Authenticate` with a token: an API token or a live session token; starts nothing.
    pub async fn authenticate_token(
        &self,
        token: &str,
        ctx: &Context,
    ) -> Result<Account, AccountsError> {
        Ok(self.lookup_token(token, ctx).await?.account)
    }

    pub async fn invite_link(&self, caller: &Principal) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = self.store.invite_token(organization).await?;
        Ok(self.link(token))
    }

    pub async fn reset_invite_link(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = InviteToken::generate();
        self.store
            .replace_invite_token(organization, &token)
            .await?;
        self.audit(
            ctx,
            Audit {
                event: "invite_reset",
                user_id: Some(caller.account.user.id),
                email: None,
                outcome: Ok(()),
            },
        )
        .await;
        Ok(self.link(token))
    }

    fn link(&self, token: InviteToken) -> InviteLink {
        let url = token.url(self.policy.public_url.as_deref());
        InviteLink { token, url }
    }

    pub async fn reset_api_token(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<ApiToken, AccountsError> {
        let token = ApiToken::generate();
        self.store
            .replace_api_token(caller.account.user.id, &token.hash(), ctx.now)
            .await?;
        self.audit(
            ctx,
            Audit {
                event: "api_token_reset",
                user_id: Some(caller.account.user.id),
                email: None,
                outcome: Ok(()),
            },
        )
        .await;
        Ok(token)
    }

    /// Ends the session the caller presented.
    pub async fn logout(
        &self,
        credentials: &Credentials,
        ctx: &Context,
    ) -> Result<(), AccountsError> {
        let Credentials::Session(token) = credentials else {
            return Err(AccountsError::SessionRequired);
        };
        let caller = self.caller(credentials, ctx).await?;
        self.store.end_session(&TokenHash::of(token)).await?;
        self.audit(
            ctx,
            Audit {
                event: "logout",
                user_id: Some(caller.account.user.id),
                email: None,
                outcome: Ok(()),
            },
        )
        .await;
        Ok(())
    }

    /// Creates the bootstrap account unless it exists; runs on every start.
    pub async fn bootstrap(
        &self,
        account: &BootstrapAccount,
    ) -> Result<Bootstrapped, AccountsError> {
        self.ensure_ready()?;
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
        let ctx = Context::internal();
        let created = self
            .create(fields, account.user_token.clone(), joining, false, &ctx)
            .await;
        match created {
            Ok(_) => {
                self.audit_created(&ctx, "bootstrap", &account.email, &created)
                    .await;
                Ok(Bootstrapped::Created)
            }
            // Another replica bootstrapped the same account a moment earlier.
            Err(AccountsError::EmailTaken) => Ok(Bootstrapped::AlreadyExists),
            Err(other) => Err(other),
        }
    }

    /// Deletes expired sessions and throttle rows older than the longest throttle window.
    pub async fn purge(&self) {
        let throttle = self.policy.throttle;
        let window = [
            throttle.login_per_email,
            throttle.login_per_address,
            throttle.token_per_address,
            throttle.invite_per_address,
        ]
        .iter()
        .map(|rule| rule.window)
        .max()
        .unwrap_or_default();
        let now = now();
        match self.store.purge(now, now - window).await {
            Ok(rows) => tracing::debug!(rows, "purged expired sessions and stale throttle rows"),
            Err(error) => tracing::warn!(%error, "purge failed"),
        }
    }

    /// Sets a new password for the account with this email and ends its sessions.
    pub async fn reset_password(&self, email: &str, password: &str) -> Result<bool, AccountsError> {
        self.ensure_ready()?;
        let email = Email::parse(email).map_err(AccountsError::invalid("username"))?;
        let password = Password::parse(password).map_err(AccountsError::invalid("password"))?;
        let hash = self.hasher.hash(&password, None).await?;
        let found = self.store.reset_password(&email, &hash).await?;
        self.audit(
            &Context::internal(),
            Audit {
                event: "password_reset",
                user_id: None,
                email: Some(&email),
                outcome: if found {
                    Ok(())
                } else {
                    Err("NO_SUCH_ACCOUNT")
                },
            },
        )
        .await;
        Ok(found)
    }
}

/// The bootstrap account from `--username/--password/--user-token` or Label Studio's variables,
/// checked before anything starts.
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

struct AccountFields {
    email: Email,
    password: Password,
    username: Username,
    first_name: PersonName,
    last_name: PersonName,
}

/// Parses every field before any work is spent on the request.
fn parse_account_fields(input: &SignUp) -> Result<AccountFields, AccountsError> {
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

fn member_of(caller: &Principal) -> Result<i64, AccountsError> {
    caller
        .account
        .organization
        .as_ref()
        .map(|organization| organization.id)
        .ok_or(AccountsError::NotAMember)
}
