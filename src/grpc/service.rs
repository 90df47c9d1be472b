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
    accounts::{
        self, Accounts, AccountsError, Context, Created, CurrentUser, InviteLink, MemberSearch,
        MembersPage, ProfileUpdate, SignUp,
    },
    authz::HeaderSource,
    domain::{Account, Member, MemberRole, Organization, ParseError, User},
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

fn role(role: Option<MemberRole>) -> pb::MemberRole {
    match role {
        Some(MemberRole::Owner) => pb::MemberRole::Owner,
        Some(MemberRole::Member) => pb::MemberRole::Member,
        None => pb::MemberRole::Unspecified,
    }
}

impl From<&Member> for pb::Member {
    fn from(member: &Member) -> Self {
        Self {
            user: Some((&member.user).into()),
            role: role(Some(member.role)).into(),
            joined_at: Some(timestamp(member.joined_at)),
            removed_at: member.removed_at.map(timestamp),
        }
    }
}

impl From<CurrentUser> for pb::GetCurrentUserResponse {
    fn from(current: CurrentUser) -> Self {
        let (user, organization) = account_parts(&current.account);
        Self {
            user,
            organization,
            role: role(current.role).into(),
        }
    }
}

impl From<MembersPage> for pb::ListMembersResponse {
    fn from(page: MembersPage) -> Self {
        Self {
            members: page.members.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
            total_size: i32::try_from(page.total_size).unwrap_or(i32::MAX),
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

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        observed(&self.metrics, "GetCurrentUser", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            Ok(self.accounts.current_user(caller).into())
        })
        .await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        observed(&self.metrics, "ListMembers", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let pb::ListMembersRequest {
                page_size,
                page_token,
                query,
                include_removed,
            } = request.into_inner();
            let search = MemberSearch {
                page_size,
                page_token,
                query,
                include_removed,
            };
            Ok(self
                .accounts
                .list_members(&caller, search, &ctx)
                .await?
                .into())
        })
        .await
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        observed(&self.metrics, "GetUser", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let member = self
                .accounts
                .get_user(&caller, &request.get_ref().user_id, &ctx)
                .await?;
            Ok(pb::GetUserResponse {
                member: Some((&member).into()),
            })
        })
        .await
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        observed(&self.metrics, "UpdateProfile", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let pb::UpdateProfileRequest {
                first_name,
                last_name,
                username,
                update_mask,
            } = request.into_inner();
            let update = ProfileUpdate {
                first_name,
                last_name,
                username,
                mask: update_mask.map(|mask| mask.paths).unwrap_or_default(),
            };
            let account = self.accounts.update_profile(&caller, update, &ctx).await?;
            Ok(pb::UpdateProfileResponse {
                user: Some((&account.user).into()),
            })
        })
        .await
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        observed(&self.metrics, "ChangePassword", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let message = request.get_ref();
            let session = self
                .accounts
                .change_password(
                    &caller,
                    &message.current_password,
                    &message.new_password,
                    &ctx,
                )
                .await?;
            tracing::info!(user = caller.account.user.id, "password changed");
            Ok(pb::ChangePasswordResponse {
                session_token: session.token.expose().to_owned(),
                session_expires_at: Some(timestamp(session.expires_at)),
            })
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        observed(&self.metrics, "RemoveMember", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let user = self
                .accounts
                .remove_member(&caller, &request.get_ref().user_id, &ctx)
                .await?;
            tracing::info!(user, by = caller.account.user.id, "member removed");
            Ok(pb::RemoveMemberResponse {})
        })
        .await
    }

    async fn restore_member(
        &self,
        request: Request<pb::RestoreMemberRequest>,
    ) -> Result<Response<pb::RestoreMemberResponse>, Status> {
        observed(&self.metrics, "RestoreMember", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let user = self
                .accounts
                .restore_member(&caller, &request.get_ref().user_id, &ctx)
                .await?;
            tracing::info!(user, by = caller.account.user.id, "member restored");
            Ok(pb::RestoreMemberResponse {})
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        observed(&self.metrics, "DeleteUser", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let user = self
                .accounts
                .delete_user(&caller, &request.get_ref().user_id, &ctx)
                .await?;
            tracing::info!(user, by = caller.account.user.id, "account deleted");
            Ok(pb::DeleteUserResponse {})
        })
        .await
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::UpdateOrganizationResponse>, Status> {
        observed(&self.metrics, "UpdateOrganization", async {
            let ctx = self.context(&request);
            let caller = self.caller(&request, &ctx).await?;
            let organization = self
                .accounts
                .update_organization(&caller, &request.get_ref().title, &ctx)
                .await?;
            tracing::info!(user = caller.account.user.id, "organization renamed");
            Ok(pb::UpdateOrganizationResponse {
                organization: Some((&organization).into()),
            })
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
