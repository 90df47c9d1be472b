//! The use cases: sign up, authenticate, invite links, tokens, bootstrap and password reset.
//! Inputs arrive as plain strings and leave as domain types; the transport stays outside.

mod error;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use tokio::time::Instant;

pub use error::AccountsError;

use crate::{
    domain::{
        Account, ApiToken, Email, InviteToken, Password, PersonName, SessionToken, TokenHash,
        UserToken, Username,
    },
    password::{PasswordHasher, Verdict},
    store::{Joining, NewAccount, NewSession, Principal, Store, TokenKind},
};

/// Rules that come from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub disable_signup_without_link: bool,
    pub session_ttl: Duration,
    pub public_url: Option<String>,
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

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    policy: Arc<Policy>,
    /// False until migrations ran: calls before that are refused as unavailable.
    ready: Arc<AtomicBool>,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, hasher: PasswordHasher, policy: Policy) -> Self {
        Self {
            store,
            hasher,
            policy: Arc::new(policy),
            ready: Arc::new(AtomicBool::new(false)),
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

    fn ensure_ready(&self) -> Result<(), AccountsError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(AccountsError::Unavailable(None))
        }
    }

    /// The principal behind the caller's credentials.
    pub async fn caller(
        &self,
        credentials: &Credentials,
        now: DateTime<Utc>,
    ) -> Result<Principal, AccountsError> {
        self.ensure_ready()?;
        let (token, kind) = match credentials {
            Credentials::ApiToken(token) => (token, TokenKind::Api),
            Credentials::Session(token) => (token, TokenKind::Session),
        };
        match self.store.principal(&TokenHash::of(token), now).await? {
            Some(principal) if principal.kind == kind => Ok(principal),
            _ => Err(AccountsError::TokenInvalid),
        }
    }

    /// `CreateUser`: self-signup without a caller, an administrator's create with one.
    pub async fn create_user(
        &self,
        caller: Option<&Principal>,
        input: SignUp,
        now: DateTime<Utc>,
        deadline: Option<Instant>,
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
            Some(principal) => Joining::Organization(
                principal
                    .account
                    .organization
                    .as_ref()
                    .ok_or(AccountsError::NotAMember)?
                    .id,
            ),
        };
        // Administrators create accounts for someone else: no session is started for them.
        let with_session = caller.is_none();
        self.create(fields, user_token, joining, with_session, now, deadline)
            .await
    }

    /// `RegisterWithInvite`: joins the organization whose current invite token this is.
    pub async fn register_with_invite(
        &self,
        invite: &str,
        input: SignUp,
        now: DateTime<Utc>,
        deadline: Option<Instant>,
    ) -> Result<Created, AccountsError> {
        self.ensure_ready()?;
        let invite = InviteToken::parse_invite(invite).map_err(AccountsError::invalid("invite"))?;
        let fields = parse_account_fields(&input)?;
        // Checked before hashing so a guessed token costs no hashing; checked again inside the
        // transaction so a reset that commits meanwhile still wins.
        if self.store.organization_by_invite(&invite).await?.is_none() {
            return Err(AccountsError::InviteInvalid);
        }
        self.create(fields, None, Joining::Invite(invite), true, now, deadline)
            .await
    }

    async fn create(
        &self,
        fields: AccountFields,
        user_token: Option<UserToken>,
        joining: Joining,
        with_session: bool,
        now: DateTime<Utc>,
        deadline: Option<Instant>,
    ) -> Result<Created, AccountsError> {
        if self.store.email_exists(&fields.email).await? {
            return Err(AccountsError::EmailTaken);
        }
        let password_hash = self.hasher.hash(&fields.password, deadline).await?;
        let api_token = user_token.map_or_else(ApiToken::generate, ApiToken::from);
        let session = with_session.then(|| StartedSession {
            token: SessionToken::generate(),
            expires_at: now + self.policy.session_ttl,
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
                now,
            })
            .await?;
        Ok(Created {
            account,
            api_token,
            session,
        })
    }

    /// `Authenticate` with a password: starts a session. Unknown emails, wrong passwords and
    /// inactive users all spend one hash and fail the same way.
    pub async fn authenticate_password(
        &self,
        email: &str,
        password: &str,
        now: DateTime<Utc>,
        deadline: Option<Instant>,
    ) -> Result<(Account, StartedSession), AccountsError> {
        self.ensure_ready()?;
        // A malformed email or an impossible password can't match any account: refuse it
        // as a failed login, so the answer doesn't tell which input was wrong.
        let (Ok(email), Ok(password)) = (Email::parse(email), Password::parse(password)) else {
            return Err(AccountsError::InvalidCredentials);
        };
        let record = self.store.login_record(&email).await?;
        let stored = record.as_ref().and_then(|r| r.password_hash.as_deref());
        let verdict = self.hasher.verify(stored, &password, deadline).await?;
        let record = match (record, verdict) {
            (Some(record), Verdict::Match | Verdict::MatchNeedsRehash) if record.is_active => {
                record
            }
            _ => return Err(AccountsError::InvalidCredentials),
        };
        let user = record.account.user.id;
        if verdict == Verdict::MatchNeedsRehash {
            match self.hasher.hash(&password, deadline).await {
                Ok(hash) => self.store.set_password_hash(user, &hash).await?,
                // The login itself succeeded; the upgrade waits for the next one.
                Err(error) => tracing::warn!(user, %error, "password re-hash skipped"),
            }
        }
        let session = StartedSession {
            token: SessionToken::generate(),
            expires_at: now + self.policy.session_ttl,
        };
        self.store
            .create_session(
                user,
                &NewSession {
                    token: session.token.hash(),
                    expires_at: session.expires_at,
                },
                now,
            )
            .await?;
        Ok((record.account, session))
    }

    /// `Authenticate` with a token: an API token or a live session token; starts nothing.
    pub async fn authenticate_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Account, AccountsError> {
        self.ensure_ready()?;
        if token.is_empty() || token.len() > 512 {
            return Err(AccountsError::TokenInvalid);
        }
        self.store
            .principal(&TokenHash::of(token), now)
            .await?
            .map(|principal| principal.account)
            .ok_or(AccountsError::TokenInvalid)
    }

    pub async fn invite_link(&self, caller: &Principal) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = self.store.invite_token(organization).await?;
        Ok(self.link(token))
    }

    pub async fn reset_invite_link(&self, caller: &Principal) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = InviteToken::generate();
        self.store
            .replace_invite_token(organization, &token)
            .await?;
        Ok(self.link(token))
    }

    fn link(&self, token: InviteToken) -> InviteLink {
        let url = token.url(self.policy.public_url.as_deref());
        InviteLink { token, url }
    }

    pub async fn reset_api_token(
        &self,
        caller: &Principal,
        now: DateTime<Utc>,
    ) -> Result<ApiToken, AccountsError> {
        let token = ApiToken::generate();
        self.store
            .replace_api_token(caller.account.user.id, &token.hash(), now)
            .await?;
        Ok(token)
    }

    /// Ends the session the caller presented.
    pub async fn logout(
        &self,
        credentials: &Credentials,
        now: DateTime<Utc>,
    ) -> Result<(), AccountsError> {
        let Credentials::Session(token) = credentials else {
            return Err(AccountsError::SessionRequired);
        };
        self.caller(credentials, now).await?;
        self.store.end_session(&TokenHash::of(token)).await?;
        Ok(())
    }

    /// Creates the bootstrap account unless it exists; runs on every start.
    pub async fn bootstrap(
        &self,
        account: &BootstrapAccount,
        now: DateTime<Utc>,
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
        match self
            .create(
                fields,
                account.user_token.clone(),
                joining,
                false,
                now,
                None,
            )
            .await
        {
            Ok(_) => Ok(Bootstrapped::Created),
            // Another replica bootstrapped the same account a moment earlier.
            Err(AccountsError::EmailTaken) => Ok(Bootstrapped::AlreadyExists),
            Err(other) => Err(other),
        }
    }

    /// Sets a new password for the account with this email and ends its sessions.
    pub async fn reset_password(&self, email: &str, password: &str) -> Result<bool, AccountsError> {
        self.ensure_ready()?;
        let email = Email::parse(email).map_err(AccountsError::invalid("username"))?;
        let password = Password::parse(password).map_err(AccountsError::invalid("password"))?;
        let hash = self.hasher.hash(&password, None).await?;
        Ok(self.store.reset_password(&email, &hash).await?)
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
