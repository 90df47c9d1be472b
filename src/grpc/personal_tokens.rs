//! The personal access token, access token and key set calls of `IdentityService`: requests
//! into use cases, results into responses.

use tonic::{Request, Response, Status};

use super::{
    metadata::credentials,
    pb,
    service::{IdentityApi, observed, timestamp},
};
use crate::{
    accounts::{AccountsError, IssuedPersonalToken, SettingsUpdate},
    domain::ParseError,
    store::TokenSettings,
};

impl From<TokenSettings> for pb::TokenSettings {
    fn from(settings: TokenSettings) -> Self {
        Self {
            api_tokens_enabled: settings.api_tokens_enabled,
            legacy_api_tokens_enabled: settings.legacy_api_tokens_enabled,
            api_token_ttl_days: settings.api_token_ttl_days,
        }
    }
}

fn issued(token: IssuedPersonalToken) -> pb::CreatePersonalAccessTokenResponse {
    use secrecy::ExposeSecret;
    pb::CreatePersonalAccessTokenResponse {
        token: token.token.expose_secret().to_owned(),
        created_at: Some(timestamp(token.created_at)),
        expires_at: Some(timestamp(token.expires_at)),
    }
}

/// Which settings an update mask names; all of them when it names none.
fn settings_update(
    settings: Option<pb::TokenSettings>,
    mask: Option<prost_types::FieldMask>,
) -> Result<SettingsUpdate, AccountsError> {
    let settings = settings.ok_or(AccountsError::InvalidField {
        field: "settings",
        error: ParseError {
            reason: "SETTINGS_REQUIRED",
            message: "settings is required".into(),
        },
    })?;
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    let all = paths.is_empty();
    let mut update = SettingsUpdate::default();
    for path in &paths {
        if ![
            "api_tokens_enabled",
            "legacy_api_tokens_enabled",
            "api_token_ttl_days",
        ]
        .contains(&path.as_str())
        {
            return Err(AccountsError::InvalidField {
                field: "update_mask",
                error: ParseError {
                    reason: "UPDATE_MASK_INVALID",
                    message: format!("update_mask names an unknown field: {path:?}"),
                },
            });
        }
    }
    let named = |field: &str| all || paths.iter().any(|p| p == field);
    if named("api_tokens_enabled") {
        update.api_tokens_enabled = Some(settings.api_tokens_enabled);
    }
    if named("legacy_api_tokens_enabled") {
        update.legacy_api_tokens_enabled = Some(settings.legacy_api_tokens_enabled);
    }
    if named("api_token_ttl_days") {
        update.api_token_ttl_days = Some(settings.api_token_ttl_days);
    }
    Ok(update)
}

impl IdentityApi {
    pub(super) async fn create_pat(
        &self,
        request: Request<pb::CreatePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::CreatePersonalAccessTokenResponse>, Status> {
        observed(self.metrics(), "CreatePersonalAccessToken", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let token = self.accounts().create_personal_token(&caller, &ctx).await?;
            tracing::info!(
                user = caller.account.user.id,
                "personal access token created"
            );
            Ok(issued(token))
        })
        .await
    }

    pub(super) async fn list_pats(
        &self,
        request: Request<pb::ListPersonalAccessTokensRequest>,
    ) -> Result<Response<pb::ListPersonalAccessTokensResponse>, Status> {
        observed(self.metrics(), "ListPersonalAccessTokens", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let tokens = self.accounts().personal_tokens(&caller, &ctx).await?;
            Ok(pb::ListPersonalAccessTokensResponse {
                tokens: tokens
                    .into_iter()
                    .map(|t| pb::PersonalAccessToken {
                        truncated_token: t.token,
                        created_at: Some(timestamp(t.created_at)),
                        expires_at: Some(timestamp(t.expires_at)),
                    })
                    .collect(),
            })
        })
        .await
    }

    pub(super) async fn revoke_pat(
        &self,
        request: Request<pb::RevokePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::RevokePersonalAccessTokenResponse>, Status> {
        observed(self.metrics(), "RevokePersonalAccessToken", async {
            let ctx = self.context(&request);
            let caller = match credentials(request.metadata())? {
                Some(credentials) => Some(self.accounts().caller(&credentials, &ctx).await?),
                None => None,
            };
            let token = request.into_inner().token;
            self.accounts()
                .revoke_personal_token(caller.as_ref(), &token, &ctx)
                .await?;
            tracing::info!(
                by = caller.map(|c| c.account.user.id),
                "personal access token revoked"
            );
            Ok(pb::RevokePersonalAccessTokenResponse {})
        })
        .await
    }

    pub(super) async fn rotate_pat(
        &self,
        request: Request<pb::RotatePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::RotatePersonalAccessTokenResponse>, Status> {
        observed(self.metrics(), "RotatePersonalAccessToken", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let token = request.into_inner().token;
            let new = self
                .accounts()
                .rotate_personal_token(&caller, &token, &ctx)
                .await?;
            tracing::info!(
                user = caller.account.user.id,
                "personal access token rotated"
            );
            let pb::CreatePersonalAccessTokenResponse {
                token,
                created_at,
                expires_at,
            } = issued(new);
            Ok(pb::RotatePersonalAccessTokenResponse {
                token,
                created_at,
                expires_at,
            })
        })
        .await
    }

    pub(super) async fn refresh(
        &self,
        request: Request<pb::RefreshAccessTokenRequest>,
    ) -> Result<Response<pb::RefreshAccessTokenResponse>, Status> {
        use secrecy::ExposeSecret;
        observed(self.metrics(), "RefreshAccessToken", async {
            let ctx = self.context(&request);
            let refresh = request.into_inner().refresh;
            let access = self.accounts().refresh_access_token(&refresh, &ctx).await?;
            Ok(pb::RefreshAccessTokenResponse {
                access_token: access.token.expose_secret().to_owned(),
                expires_at: Some(timestamp(access.expires_at)),
            })
        })
        .await
    }

    pub(super) async fn get_settings(
        &self,
        request: Request<pb::GetTokenSettingsRequest>,
    ) -> Result<Response<pb::GetTokenSettingsResponse>, Status> {
        observed(self.metrics(), "GetTokenSettings", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let settings = self.accounts().token_settings(&caller, &ctx).await?;
            Ok(pb::GetTokenSettingsResponse {
                settings: Some(settings.into()),
            })
        })
        .await
    }

    pub(super) async fn update_settings(
        &self,
        request: Request<pb::UpdateTokenSettingsRequest>,
    ) -> Result<Response<pb::UpdateTokenSettingsResponse>, Status> {
        observed(self.metrics(), "UpdateTokenSettings", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let pb::UpdateTokenSettingsRequest {
                settings,
                update_mask,
            } = request.into_inner();
            let update = settings_update(settings, update_mask)?;
            let settings = self
                .accounts()
                .update_token_settings(&caller, update, &ctx)
                .await?;
            tracing::info!(user = caller.account.user.id, "token settings updated");
            Ok(pb::UpdateTokenSettingsResponse {
                settings: Some(settings.into()),
            })
        })
        .await
    }

    pub(super) async fn key_set(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        observed(self.metrics(), "GetJwks", async {
            Ok(pb::GetJwksResponse {
                jwks_json: self.accounts().jwks(),
            })
        })
        .await
    }
}
