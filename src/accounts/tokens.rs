//! API tokens and sessions: checking them (the one read a token check costs), replacing the API
//! token and logging out.

use chrono::Duration;

use super::{Accounts, AccountsError, Context, Credentials, audit::Audit, earlier};
use crate::{
    domain::{Account, ApiToken, TokenHash},
    store::{Principal, TokenKind},
};

/// Longest token worth looking up; longer ones are refused without touching the database.
const MAX_TOKEN_LEN: usize = 512;

/// A session's last use is recorded at most this often, so a check stays a single read.
const TOUCH_EVERY: Duration = Duration::seconds(60);

impl Accounts {
    /// Looks a token up with the client's token throttle; counts a failure when it is unknown.
    pub(crate) async fn lookup_token(
        &self,
        token: &str,
        ctx: &Context,
    ) -> Result<Principal, AccountsError> {
        self.ensure_ready()?;
        let key = self.address_key("token-addr", ctx);
        let rule = self.policy.throttle.token_per_address;
        let _slot = self
            .in_flight
            .enter(&key, ctx.deadline)
            .await
            .ok_or_else(|| self.throttled(ctx, "token_auth", ctx.now))?;
        let principal = if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            if let Some(until) = self
                .db(ctx, self.store.blocked_until(&key, ctx.now))
                .await?
            {
                return Err(self.throttled(ctx, "token_auth", until));
            }
            None
        } else {
            let hash = TokenHash::of(token);
            let idle_since = earlier(ctx.now, self.policy.session_max_idle);
            let lookup = self
                .db(
                    ctx,
                    self.store.principal(&hash, Some(&key), ctx.now, idle_since),
                )
                .await?;
            if let Some(until) = lookup.blocked_until.filter(|until| *until > ctx.now) {
                // While the address is blocked even a right token is refused, so the answers
                // don't tell guesses apart.
                return Err(self.throttled(ctx, "token_auth", until));
            }
            // Often enough that a session in use never reaches its idle limit.
            let touch_every = TOUCH_EVERY.min(self.policy.session_max_idle / 4);
            if let Some(principal) = &lookup.principal
                && principal.kind == TokenKind::Session
                && principal
                    .last_used_at
                    .is_none_or(|last| ctx.now - last >= touch_every)
            {
                self.db(ctx, self.store.touch_session(&hash, ctx.now))
                    .await?;
            }
            lookup.principal
        };
        match principal {
            Some(principal)
                if principal.kind == TokenKind::Api && !principal.legacy_tokens_enabled =>
            {
                Err(AccountsError::LegacyTokensDisabled)
            }
            Some(principal) => Ok(principal),
            None => {
                self.record_failure(
                    ctx,
                    &key,
                    rule,
                    Audit::failure("token_auth", "TOKEN_INVALID"),
                )
                .await?;
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
            Credentials::AccessToken(token) => return self.access_principal(token, ctx).await,
        };
        let principal = self.lookup_token(token, ctx).await?;
        if principal.kind == kind {
            Ok(principal)
        } else {
            Err(AccountsError::TokenInvalid)
        }
    }

    /// `Authenticate` with a token: an API token, a live session token or an access token
    /// (told apart by its shape, and checked without the database); starts nothing.
    pub async fn authenticate_token(
        &self,
        token: &str,
        ctx: &Context,
    ) -> Result<Account, AccountsError> {
        if crate::domain::jwt::looks_like_jwt(token) {
            return Ok(self.access_principal(token, ctx).await?.account);
        }
        Ok(self.lookup_token(token, ctx).await?.account)
    }

    pub async fn reset_api_token(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<ApiToken, AccountsError> {
        let token = ApiToken::generate();
        let user = caller.account.user.id;
        self.db(
            ctx,
            self.store.replace_api_token(user, &token.hash(), ctx.now),
        )
        .await?;
        self.audit(ctx, Audit::success("api_token_reset", Some(user)))
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
        self.db(ctx, self.store.end_session(&TokenHash::of(token)))
            .await?;
        self.audit(ctx, Audit::success("logout", Some(caller.account.user.id)))
            .await;
        Ok(())
    }
}
