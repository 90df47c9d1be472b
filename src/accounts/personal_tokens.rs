//! Personal access tokens as Label Studio 1.23 issues them: one live PAT per user, listed
//! truncated, revoked by its owner or by whoever holds it whole, rotated by its owner, and
//! refreshed into an access token without any other credentials. Also the organization's token
//! settings.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{
    Accounts, AccountsError, Context, access_tokens::IssuedAccess, audit::Audit, later, member_of,
};
use crate::{
    domain::{
        ParseError,
        jwt::{self, ClaimUserId, Parts, RefreshClaims},
    },
    store::{PersonalToken, PersonalTokenOwner, Principal, TokenSettings},
};

/// Longest PAT lifetime in days (Label Studio's fixed 200 years), and the settings' bound.
pub const MAX_TTL_DAYS: i32 = 73_000;

/// A PAT just made: the whole token is shown once.
#[derive(Debug, Clone)]
pub struct IssuedPersonalToken {
    pub token: SecretString,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Which settings an update changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SettingsUpdate {
    pub api_tokens_enabled: Option<bool>,
    pub legacy_api_tokens_enabled: Option<bool>,
    pub api_token_ttl_days: Option<i32>,
}

impl Accounts {
    /// The token settings of the caller's organization.
    pub async fn token_settings(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<TokenSettings, AccountsError> {
        let organization = member_of(caller)?;
        self.db(ctx, self.store.token_settings(organization)).await
    }

    /// Changes the token settings of the caller's organization; its owner only.
    pub async fn update_token_settings(
        &self,
        caller: &Principal,
        update: SettingsUpdate,
        ctx: &Context,
    ) -> Result<TokenSettings, AccountsError> {
        let organization = member_of(caller)?;
        let owner = caller
            .account
            .organization
            .as_ref()
            .and_then(|o| o.created_by_user_id);
        if owner != Some(caller.account.user.id) {
            return Err(AccountsError::OwnerRequired);
        }
        if let Some(days) = update.api_token_ttl_days
            && !(1..=MAX_TTL_DAYS).contains(&days)
        {
            return Err(AccountsError::InvalidField {
                field: "api_token_ttl_days",
                error: ParseError::new(
                    "TTL_DAYS_OUT_OF_RANGE",
                    format!("api_token_ttl_days must be 1 to {MAX_TTL_DAYS}"),
                ),
            });
        }
        let mut settings = self
            .db(ctx, self.store.token_settings(organization))
            .await?;
        if let Some(on) = update.api_tokens_enabled {
            settings.api_tokens_enabled = on;
        }
        if let Some(on) = update.legacy_api_tokens_enabled {
            settings.legacy_api_tokens_enabled = on;
        }
        if let Some(days) = update.api_token_ttl_days {
            settings.api_token_ttl_days = days;
        }
        self.db(ctx, self.store.put_token_settings(organization, &settings))
            .await?;
        self.audit(
            ctx,
            Audit::success("token_settings_updated", Some(caller.account.user.id)),
        )
        .await;
        Ok(settings)
    }

    /// Issues the caller a PAT, unless they already have a live one or their organization
    /// switched PATs off.
    pub async fn create_personal_token(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<IssuedPersonalToken, AccountsError> {
        let settings = self.caller_settings(caller, ctx).await?;
        let (issued, record) = self.new_personal_token(caller, &settings, ctx)?;
        if !self
            .db(ctx, self.store.create_personal_token(&record))
            .await?
        {
            return Err(AccountsError::TokenExists);
        }
        self.audit(
            ctx,
            Audit::success("personal_token_created", Some(caller.account.user.id)),
        )
        .await;
        Ok(issued)
    }

    /// The caller's live PATs, as `header.payload` (never whole).
    pub async fn personal_tokens(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<Vec<PersonalToken>, AccountsError> {
        self.db(
            ctx,
            self.store
                .live_personal_tokens(caller.account.user.id, ctx.now),
        )
        .await
    }

    /// Revokes a PAT, given whole or as `header.payload`: the caller must own it, or give it
    /// whole (the token proves itself). Access tokens already signed from it stay valid until
    /// they expire, as in Label Studio.
    pub async fn revoke_personal_token(
        &self,
        caller: Option<&Principal>,
        token: &str,
        ctx: &Context,
    ) -> Result<(), AccountsError> {
        self.ensure_ready()?;
        let Some(parts) = Parts::split(token.trim(), true).ok() else {
            return self.refused(caller, ctx).await;
        };
        let Some(record) = self.stored_personal(&parts, ctx).await? else {
            return self.refused(caller, ctx).await;
        };
        let owner = caller.is_some_and(|c| c.account.user.id == record.token.user_id);
        let proven = parts.is_complete()
            && self
                .personal_key(&record.token.key_id)
                .is_some_and(|key| parts.verify(&key).is_ok());
        if !owner && !proven {
            return self.refused(caller, ctx).await;
        }
        if !self
            .db(
                ctx,
                self.store.revoke_personal_token(&record.token.jti, ctx.now),
            )
            .await?
        {
            return Err(AccountsError::TokenNotFound);
        }
        self.audit(
            ctx,
            Audit::success("personal_token_revoked", Some(record.token.user_id)),
        )
        .await;
        Ok(())
    }

    /// Revokes the caller's PAT and issues a new one in its place, in one step.
    pub async fn rotate_personal_token(
        &self,
        caller: &Principal,
        token: &str,
        ctx: &Context,
    ) -> Result<IssuedPersonalToken, AccountsError> {
        let parts = Parts::split(token.trim(), true).map_err(|_| AccountsError::TokenInvalid)?;
        let record = self
            .stored_personal(&parts, ctx)
            .await?
            .filter(|r| {
                r.token.user_id == caller.account.user.id
                    && r.token.revoked_at.is_none()
                    && r.token.expires_at > ctx.now
            })
            .ok_or(AccountsError::TokenInvalid)?;
        let settings = self.caller_settings(caller, ctx).await?;
        let (issued, new) = self.new_personal_token(caller, &settings, ctx)?;
        if !self
            .db(
                ctx,
                self.store.rotate_personal_token(&record.token.jti, &new),
            )
            .await?
        {
            return Err(AccountsError::TokenInvalid);
        }
        self.audit(
            ctx,
            Audit::success("personal_token_rotated", Some(caller.account.user.id)),
        )
        .await;
        Ok(issued)
    }

    /// Exchanges a live PAT for an access token: no other credentials, one read. A refused
    /// PAT counts toward the client's token throttle.
    pub async fn refresh_access_token(
        &self,
        refresh: &str,
        ctx: &Context,
    ) -> Result<IssuedAccess, AccountsError> {
        self.ensure_ready()?;
        let key = self.address_key("token-addr", ctx);
        let _slot = self
            .in_flight
            .enter(&key, ctx.deadline)
            .await
            .ok_or_else(|| self.throttled(ctx, "token_refresh", ctx.now))?;
        let parts = Parts::split(refresh.trim(), false).ok();
        let claims = parts
            .as_ref()
            .and_then(|p| p.claims::<RefreshClaims>().ok());
        let found = match (&parts, &claims) {
            (Some(parts), Some(claims)) => {
                let lookup = self
                    .db(ctx, self.store.personal_token(&claims.jti, Some(&key)))
                    .await?;
                if let Some(until) = lookup.blocked_until.filter(|until| *until > ctx.now) {
                    return Err(self.throttled(ctx, "token_refresh", until));
                }
                lookup
                    .found
                    .filter(|owner| self.refreshable(owner, parts, claims, ctx))
            }
            _ => {
                if let Some(until) = self
                    .db(ctx, self.store.blocked_until(&key, ctx.now))
                    .await?
                {
                    return Err(self.throttled(ctx, "token_refresh", until));
                }
                None
            }
        };
        let Some(owner) = found else {
            return Err(self.token_refused(ctx, "token_refresh").await);
        };
        if !owner.api_tokens_enabled {
            return Err(AccountsError::PersonalTokensDisabled);
        }
        self.sign_access(&owner.account, ctx)
    }

    /// Whether a PAT found by its `jti` is this very token, signed by its key, live, and its
    /// owner active.
    fn refreshable(
        &self,
        owner: &PersonalTokenOwner,
        parts: &Parts<'_>,
        claims: &RefreshClaims,
        ctx: &Context,
    ) -> bool {
        let record = &owner.token;
        record.token == parts.signing_input
            && self
                .personal_key(&record.key_id)
                .is_some_and(|key| parts.verify(&key).is_ok())
            && claims.token_type == jwt::REFRESH
            && claims.user_id == ClaimUserId(record.user_id)
            && jwt::check_times(claims.exp, claims.iat, None, ctx.now.timestamp()).is_ok()
            && record.revoked_at.is_none()
            && record.expires_at > ctx.now
            && owner.is_active
    }

    /// The PAT whose `header.payload` this is, if one is recorded.
    async fn stored_personal(
        &self,
        parts: &Parts<'_>,
        ctx: &Context,
    ) -> Result<Option<PersonalTokenOwner>, AccountsError> {
        let Ok(claims) = parts.claims::<RefreshClaims>() else {
            return Ok(None);
        };
        let lookup = self
            .db(ctx, self.store.personal_token(&claims.jti, None))
            .await?;
        Ok(lookup
            .found
            .filter(|owner| owner.token.token == parts.signing_input))
    }

    /// A revocation refused: counted toward the throttle when no caller vouched for it.
    async fn refused(
        &self,
        caller: Option<&Principal>,
        ctx: &Context,
    ) -> Result<(), AccountsError> {
        if caller.is_none() {
            return Err(self.token_refused(ctx, "personal_token_revoke").await);
        }
        Err(AccountsError::TokenInvalid)
    }

    /// The settings of the caller's organization (the defaults without one), refused when
    /// PATs are switched off.
    async fn caller_settings(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<TokenSettings, AccountsError> {
        let settings = match &caller.account.organization {
            Some(organization) => {
                self.db(ctx, self.store.token_settings(organization.id))
                    .await?
            }
            None => TokenSettings::default(),
        };
        if settings.api_tokens_enabled {
            Ok(settings)
        } else {
            Err(AccountsError::PersonalTokensDisabled)
        }
    }

    /// A PAT for the caller, signed with the current PAT key, living as long as the
    /// organization's settings say.
    fn new_personal_token(
        &self,
        caller: &Principal,
        settings: &TokenSettings,
        ctx: &Context,
    ) -> Result<(IssuedPersonalToken, PersonalToken), AccountsError> {
        let key = self.personal_signer()?;
        let days = settings.api_token_ttl_days.clamp(1, MAX_TTL_DAYS);
        let expires_at = later(ctx.now, chrono::Duration::days(i64::from(days)));
        let claims = RefreshClaims {
            token_type: jwt::REFRESH.to_owned(),
            exp: expires_at.timestamp(),
            iat: ctx.now.timestamp(),
            jti: hex::encode(rand::random::<[u8; 16]>()),
            user_id: ClaimUserId(caller.account.user.id),
        };
        let token = jwt::encode(&key, &claims).map_err(|e| AccountsError::Unexpected(e.into()))?;
        let truncated = token
            .rsplit_once('.')
            .map(|(input, _)| input.to_owned())
            .unwrap_or_default();
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at);
        let record = PersonalToken {
            jti: claims.jti,
            user_id: caller.account.user.id,
            token: truncated,
            key_id: key.kid().to_owned(),
            created_at: ctx.now,
            expires_at,
            revoked_at: None,
        };
        Ok((
            IssuedPersonalToken {
                token: token.into(),
                created_at: ctx.now,
                expires_at,
            },
            record,
        ))
    }
}
