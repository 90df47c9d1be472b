//! `labelstudio.identity.v1.IdentityService`: turns requests into account use cases and their
//! results into responses.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::{
    metadata::{credentials, deadline},
    pb::{self, identity_service_server::IdentityService},
};
use crate::{
    accounts::{self, Accounts, AccountsError, Created, InviteLink, SignUp},
    domain::{Account, Organization, User},
    store::Principal,
};

#[derive(Clone)]
pub struct IdentityApi {
    accounts: Accounts,
}

impl IdentityApi {
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }

    /// The caller behind the request's credentials; refused when there are none.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, AccountsError> {
        let credentials =
            credentials(request.metadata())?.ok_or(AccountsError::CredentialsMissing)?;
        self.accounts.caller(&credentials, accounts::now()).await
    }
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
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

impl From<InviteLink> for pb::InviteLinkResponse {
    fn from(link: InviteLink) -> Self {
        Self {
            token: link.token.as_str().to_owned(),
            invite_url: link.url,
        }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let now = accounts::now();
        let deadline = deadline(request.metadata());
        let caller = match credentials(request.metadata())? {
            Some(credentials) => Some(self.accounts.caller(&credentials, now).await?),
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
            .create_user(caller.as_ref(), input, now, deadline)
            .await?;
        tracing::info!(
            user = created.account.user.id,
            by = caller.map(|c| c.account.user.id),
            "account created"
        );
        Ok(Response::new(created.into()))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        use pb::authenticate_request::Credentials as Given;
        let now = accounts::now();
        let deadline = deadline(request.metadata());
        let response = match request.into_inner().credentials {
            Some(Given::Password(pb::PasswordCredentials { email, password })) => {
                let (account, session) = self
                    .accounts
                    .authenticate_password(&email, &password, now, deadline)
                    .await?;
                let (user, organization) = account_parts(&account);
                pb::AuthenticateResponse {
                    user,
                    organization,
                    session_token: session.token.expose().to_owned(),
                    session_expires_at: Some(timestamp(session.expires_at)),
                }
            }
            Some(Given::Token(token)) => {
                let account = self.accounts.authenticate_token(&token, now).await?;
                let (user, organization) = account_parts(&account);
                pb::AuthenticateResponse {
                    user,
                    organization,
                    session_token: String::new(),
                    session_expires_at: None,
                }
            }
            None => {
                return Err(AccountsError::InvalidField {
                    field: "credentials",
                    error: crate::domain::ParseError {
                        reason: "CREDENTIALS_REQUIRED",
                        message: "set either password or token".into(),
                    },
                }
                .into());
            }
        };
        Ok(Response::new(response))
    }

    async fn get_invite_link(
        &self,
        request: Request<pb::GetInviteLinkRequest>,
    ) -> Result<Response<pb::InviteLinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let link = self.accounts.invite_link(&caller).await?;
        Ok(Response::new(link.into()))
    }

    async fn reset_invite_link(
        &self,
        request: Request<pb::ResetInviteLinkRequest>,
    ) -> Result<Response<pb::InviteLinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let link = self.accounts.reset_invite_link(&caller).await?;
        tracing::info!(user = caller.account.user.id, "invite link reset");
        Ok(Response::new(link.into()))
    }

    async fn register_with_invite(
        &self,
        request: Request<pb::RegisterWithInviteRequest>,
    ) -> Result<Response<pb::RegisterWithInviteResponse>, Status> {
        let deadline = deadline(request.metadata());
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
            .register_with_invite(&invite, input, accounts::now(), deadline)
            .await?;
        tracing::info!(
            user = created.account.user.id,
            "account registered through invite"
        );
        Ok(Response::new(created.into()))
    }

    async fn reset_api_token(
        &self,
        request: Request<pb::ResetApiTokenRequest>,
    ) -> Result<Response<pb::ResetApiTokenResponse>, Status> {
        let caller = self.caller(&request).await?;
        let token = self
            .accounts
            .reset_api_token(&caller, accounts::now())
            .await?;
        tracing::info!(user = caller.account.user.id, "api token reset");
        Ok(Response::new(pb::ResetApiTokenResponse {
            api_token: token.expose().to_owned(),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let credentials =
            credentials(request.metadata())?.ok_or(AccountsError::CredentialsMissing)?;
        self.accounts.logout(&credentials, accounts::now()).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }
}
