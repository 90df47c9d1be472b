//! `labelstudio.identity.v1.IdentityService`: turns requests into account use cases and their
//! results into responses.

use std::{future::Future, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::{
    metadata::{credentials, deadline},
    pb::{self, identity_service_server::IdentityService},
    status,
};
use crate::{
    accounts::{self, Accounts, AccountsError, Context, Created, InviteLink, SignUp},
    authz::HeaderSource,
    domain::{Account, Organization, ParseError, User},
    metrics::Metrics,
    proxies::TrustedProxies,
    store::Principal,
};

#[derive(Clone)]
pub struct IdentityApi {
    accounts: Accounts,
    metrics: Arc<Metrics>,
    trusted_proxies: Arc<TrustedProxies>,
}

impl IdentityApi {
    pub fn new(
        accounts: Accounts,
        metrics: Arc<Metrics>,
        trusted_proxies: Arc<TrustedProxies>,
    ) -> Self {
        Self {
            accounts,
            metrics,
            trusted_proxies,
        }
    }

    /// The time, deadline and client address of a request.
    pub(super) fn context<T>(&self, request: &Request<T>) -> Context {
        Context {
            now: accounts::now(),
            deadline: deadline(request.metadata()),
            client: self.trusted_proxies.client(
                request.remote_addr(),
                request.metadata().texts("x-forwarded-for"),
            ),
        }
    }

    pub(super) fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The caller behind the request's credentials; refused when there are none.
    pub(super) async fn caller<T>(
        &self,
        request: &Request<T>,
        ctx: &Context,
    ) -> Result<Principal, AccountsError> {
        let credentials =
            credentials(request.metadata())?.ok_or(AccountsError::CredentialsMissing)?;
        self.accounts.caller(&credentials, ctx).await
    }
}

pub(super) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<&User> for pb::User {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.clone(),
            username: user.username.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            date_joined: Some(timestamp(user.date_joined)),
            organization_id: user
                .organization_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }
    }
}

impl From<&Organization> for pb::Organization {
    fn from(organization: &Organization) -> Self {
        Self {
            id: organization.id.to_string(),
            title: organization.title.clone(),
            created_by_user_id: organization
                .created_by_user_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }
    }
}

fn account_parts(account: &Account) -> (Option<pb::User>, Option<pb::Organization>) {
    (
        Some((&account.user).into()),
        account.organization.as_ref().map(Into::into),
    )
}

impl From<Created> for pb::CreateUserResponse {
    fn from(created: Created) -> Self {
        let (user, organization) = account_parts(&created.account);
        Self {
            user,
            organization,
            api_token: created.api_token.expose().to_owned(),
            session_token: created
                .session
                .as_ref()
                .map(|s| s.token.expose().to_owned())
                .unwrap_or_default(),
            session_expires_at: created.session.map(|s| timestamp(s.expires_at)),
        }
    }
}

impl From<Created> for pb::RegisterWithInviteResponse {
    fn from(created: Created) -> Self {
        let pb::CreateUserResponse {
            user,
            organization,
            api_token,
            session_token,
            session_expires_at,
        } = created.into();
        Self {
            user,
            organization,
            api_token,
            session_token,
            session_expires_at,
        }
    }
}

impl From<InviteLink> for pb::GetInviteLinkResponse {
    fn from(link: InviteLink) -> Self {
        Self {
            token: link.token.as_str().to_owned(),
            invite_url: link.url,
        }
    }
}

impl From<InviteLink> for pb::ResetInviteLinkResponse {
    fn from(link: InviteLink) -> Self {
        Self {
            token: link.token.as_str().to_owned(),
            invite_url: link.url,
        }
    }
}

/// Runs one call, records its outcome in the metrics and maps its error to a status.
pub(super) async fn observed<T>(
    metrics: &Metrics,
    method: &'static str,
    call: impl Future<Output = Result<T, AccountsError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let outcome = call.await;
    let code = match &outcome {
        Ok(_) => tonic::Code::Ok,
        Err(error) => {
            let code = status::code(error);
            if matches!(
                error,
                AccountsError::InvalidCredentials
                    | AccountsError::TokenInvalid
                    | AccountsError::LegacyTokensDisabled
                    | AccountsError::CredentialsMissing
                    | AccountsError::CredentialsMalformed(_)
                    | AccountsError::InviteInvalid
                    | AccountsError::Throttled { .. }
            ) {
                metrics.auth_failure(error.reason());
            }
            code
        }
    };
    metrics.observe(method, code, started.elapsed());
    outcome.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        observed(&self.metrics, "CreateUser", async {
            let ctx = self.context(&request);
            let caller = match credentials(request.metadata())? {
                Some(credentials) => Some(self.accounts.caller(&credentials, &ctx).await?),
                None => None,
            };
            let pb::CreateUserRequest {
                email,
                password,
                first_name,
                last_name,
                username,
                user_token,
            } = request.into_inner();
            let input = SignUp {
                email,
                password,
                first_name,
                last_name,
                username,
                user_token,
            };
            let created = self
                .accounts
                .create_user(caller.as_ref(), input, &ctx)
                .await?;
            tracing::info!(
                user = created.account.user.id,
                by = caller.map(|c| c.account.user.id),
                "account created"
            );
            Ok(created.into())
        })
        .await
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        use pb::authenticate_request::Credentials as Given;
        observed(&self.metrics, "Authenticate", async {
            let ctx = self.context(&request);
            match request.into_inner().credentials {
                Some(Given::Password(pb::PasswordCredentials { email, password })) => {
                    let (account, session) = self
                        .accounts
                        .authenticate_password(&email, &password, &ctx)
                        .await?;
                    let (user, organization) = account_parts(&account);
                    Ok(pb::AuthenticateResponse {
                        user,
                        organization,
                        session_token: session.token.expose().to_owned(),
                        session_expires_at: Some(timestamp(session.expires_at)),
                    })
                }
                Some(Given::Token(token)) => {
                    let account = self.accounts.authenticate_token(&token, &ctx).await?;
                    let (user, organization) = account_parts(&account);
                    Ok(pb::AuthenticateResponse {
                        user,
                        organization,
                        session_token: String::new(),
                        session_expires_at: None,
                    })
                }
                None => Err(AccountsError::InvalidField {
                    field: "credentials",
                    error: ParseError {
                        reason: "CREDENTIALS_REQUIRED",
                        message: "set either password or token".into(),
                    },
                }),
            }
        })
        .await
    }

    async fn get_invite_link(
        &self,
        request: Request<pb::GetInviteLinkRequest>,
    ) -> Result<Response<pb::GetInviteLinkResponse>, Status> {
        observed(&self.metrics, "GetInviteLink", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            Ok(self.accounts.invite_link(&caller, &ctx).await?.into())
        })
        .await
    }

    async fn reset_invite_link(
        &self,
        request: Request<pb::ResetInviteLinkRequest>,
    ) -> Result<Response<pb::ResetInviteLinkResponse>, Status> {
        observed(&self.metrics, "ResetInviteLink", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let link = self.accounts.reset_invite_link(&caller, &ctx).await?;
            tracing::info!(user = caller.account.user.id, "invite link reset");
            Ok(link.into())
        })
        .await
    }

    async fn register_with_invite(
        &self,
        request: Request<pb::RegisterWithInviteRequest>,
    ) -> Result<Response<pb::RegisterWithInviteResponse>, Status> {
        observed(&self.metrics, "RegisterWithInvite", async {
            let ctx = self.context(&request);
            let pb::RegisterWithInviteRequest {
                invite,
                email,
                password,
                first_name,
                last_name,
            } = request.into_inner();
            let input = SignUp {
                email,
                password,
                first_name,
                last_name,
                ..SignUp::default()
            };
            let created = self
                .accounts
                .register_with_invite(&invite, input, &ctx)
                .await?;
            tracing::info!(
                user = created.account.user.id,
                "account registered through invite"
            );
            Ok(created.into())
        })
        .await
    }

    async fn reset_api_token(
        &self,
        request: Request<pb::ResetApiTokenRequest>,
    ) -> Result<Response<pb::ResetApiTokenResponse>, Status> {
        observed(&self.metrics, "ResetApiToken", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let token = self.accounts.reset_api_token(&caller, &ctx).await?;
            tracing::info!(user = caller.account.user.id, "api token reset");
            Ok(pb::ResetApiTokenResponse {
                api_token: token.expose().to_owned(),
            })
        })
        .await
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        observed(&self.metrics, "Logout", async {
            let credentials =
                credentials(request.metadata())?.ok_or(AccountsError::CredentialsMissing)?;
            self.accounts
                .logout(&credentials, &self.context(&request))
                .await?;
            Ok(pb::LogoutResponse {})
        })
        .await
    }

    // Personal access tokens, access tokens and the key set: see `personal_tokens.rs`.

    async fn create_personal_access_token(
        &self,
        request: Request<pb::CreatePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::CreatePersonalAccessTokenResponse>, Status> {
        self.create_pat(request).await
    }

    async fn list_personal_access_tokens(
        &self,
        request: Request<pb::ListPersonalAccessTokensRequest>,
    ) -> Result<Response<pb::ListPersonalAccessTokensResponse>, Status> {
        self.list_pats(request).await
    }

    async fn revoke_personal_access_token(
        &self,
        request: Request<pb::RevokePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::RevokePersonalAccessTokenResponse>, Status> {
        self.revoke_pat(request).await
    }

    async fn rotate_personal_access_token(
        &self,
        request: Request<pb::RotatePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::RotatePersonalAccessTokenResponse>, Status> {
        self.rotate_pat(request).await
    }

    async fn refresh_access_token(
        &self,
        request: Request<pb::RefreshAccessTokenRequest>,
    ) -> Result<Response<pb::RefreshAccessTokenResponse>, Status> {
        self.refresh(request).await
    }

    async fn get_token_settings(
        &self,
        request: Request<pb::GetTokenSettingsRequest>,
    ) -> Result<Response<pb::GetTokenSettingsResponse>, Status> {
        self.get_settings(request).await
    }

    async fn update_token_settings(
        &self,
        request: Request<pb::UpdateTokenSettingsRequest>,
    ) -> Result<Response<pb::UpdateTokenSettingsResponse>, Status> {
        self.update_settings(request).await
    }

    async fn get_jwks(
        &self,
        request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        self.key_set(request).await
    }
}
