//! The People page and the owner's tools: `GetCurrentUser`, `ListMembers`, `GetUser`,
//! `RemoveMember`, `RestoreMember`, `DeleteUser` and `UpdateOrganization`, with the
//! authorization matrix owner / member / removed member / outsider (the owner of a second
//! organization) / no credentials, and Label Studio's `users/tests/test_authz_api.py` cases.

use label_studio_identity::grpc::pb;
use tonic::{Code, Status};

use crate::{
    helpers::{Backend, TestApp, TestDb, assert_refused, spawn_app, with_auth},
    on_both_backends,
};

pub const PASSWORD: &str = "correct-horse";
const OTHER_INVITE: &str = "otherorganizationinvite0123456789";

/// One account and its credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    /// `Token <api token>`.
    pub api: String,
    /// `Bearer <session token>`.
    pub session: String,
}

impl Caller {
    fn from_created(created: pb::CreateUserResponse) -> Self {
        let user = created.user.expect("user");
        Self {
            id: user.id,
            api: format!("Token {}", created.api_token),
            session: format!("Bearer {}", created.session_token),
        }
    }
}

/// An organization with its owner, a member and a removed member, and an outsider who owns a
/// second organization.
pub struct Org {
    pub app: TestApp,
    pub db: TestDb,
    pub owner: Caller,
    pub member: Caller,
    pub removed: Caller,
    pub outsider: Caller,
}

/// A time literal of the backend, `seconds` after 2024-01-01.
pub fn time_sql(backend: Backend, seconds: i64) -> String {
    match backend {
        Backend::Postgres => {
            format!("(TIMESTAMPTZ '2024-01-01 00:00:00+00' + interval '{seconds} seconds')")
        }
        Backend::Sqlite => format!("({} + {seconds} * 1000000)", 1_704_067_200_000_000_i64),
    }
}

pub async fn organization(backend: Backend) -> Org {
    let (app, db) = spawn_app(backend).await;
    let owner = Caller::from_created(app.sign_up("owner@example.com", PASSWORD).await);
    let member = Caller::from_created(app.sign_up("member@example.com", PASSWORD).await);
    let removed = Caller::from_created(app.sign_up("removed@example.com", PASSWORD).await);
    call(&app, &owner.api)
        .remove_member(&removed.id)
        .await
        .expect("remove");
    db.execute(&format!(
        "INSERT INTO organizations (title, invite_token, created_at) VALUES ('Other', '{OTHER_INVITE}', {})",
        time_sql(backend, 0)
    ))
    .await;
    let registered = app
        .register(OTHER_INVITE, "outsider@example.com", PASSWORD)
        .await
        .expect("register with the other organization");
    let outsider = Caller {
        id: registered.user.clone().expect("user").id,
        api: format!("Token {}", registered.api_token),
        session: format!("Bearer {}", registered.session_token),
    };
    db.execute(&format!(
        "UPDATE organizations SET created_by_user_id = {} WHERE invite_token = '{OTHER_INVITE}'",
        outsider.id
    ))
    .await;
    Org {
        app,
        db,
        owner,
        member,
        removed,
        outsider,
    }
}

/// The new RPCs, called with one `authorization` value (empty: none).
pub struct Call<'a> {
    app: &'a TestApp,
    auth: &'a str,
}

pub fn call<'a>(app: &'a TestApp, auth: &'a str) -> Call<'a> {
    Call { app, auth }
}

impl Call<'_> {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        if self.auth.is_empty() {
            tonic::Request::new(message)
        } else {
            with_auth(message, self.auth)
        }
    }

    pub async fn whoami(&self) -> Result<pb::GetCurrentUserResponse, Status> {
        let request = self.request(pb::GetCurrentUserRequest {});
        let reply = self.app.client.clone().get_current_user(request).await;
        reply.map(tonic::Response::into_inner)
    }

    pub async fn list(
        &self,
        message: pb::ListMembersRequest,
    ) -> Result<pb::ListMembersResponse, Status> {
        let request = self.request(message);
        let reply = self.app.client.clone().list_members(request).await;
        reply.map(tonic::Response::into_inner)
    }

    pub async fn get_user(&self, user_id: &str) -> Result<pb::Member, Status> {
        let request = self.request(pb::GetUserRequest {
            user_id: user_id.into(),
        });
        let reply = self.app.client.clone().get_user(request).await;
        reply.map(|r| r.into_inner().member.expect("member"))
    }

    pub async fn update_profile(
        &self,
        message: pb::UpdateProfileRequest,
    ) -> Result<pb::User, Status> {
        let request = self.request(message);
        let reply = self.app.client.clone().update_profile(request).await;
        reply.map(|r| r.into_inner().user.expect("user"))
    }

    pub async fn change_password(
        &self,
        current: &str,
        new: &str,
    ) -> Result<pb::ChangePasswordResponse, Status> {
        let request = self.request(pb::ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        });
        let reply = self.app.client.clone().change_password(request).await;
        reply.map(tonic::Response::into_inner)
    }

    pub async fn remove_member(&self, user_id: &str) -> Result<(), Status> {
        let request = self.request(pb::RemoveMemberRequest {
            user_id: user_id.into(),
        });
        self.app
            .client
            .clone()
            .remove_member(request)
            .await
            .map(drop)
    }

    pub async fn restore_member(&self, user_id: &str) -> Result<(), Status> {
        let request = self.request(pb::RestoreMemberRequest {
            user_id: user_id.into(),
        });
        self.app
            .client
            .clone()
            .restore_member(request)
            .await
            .map(drop)
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<(), Status> {
        let request = self.request(pb::DeleteUserRequest {
            user_id: user_id.into(),
        });
        self.app.client.clone().delete_user(request).await.map(drop)
    }

    pub async fn rename(&self, title: &str) -> Result<pb::Organization, Status> {
        let request = self.request(pb::UpdateOrganizationRequest {
            title: title.into(),
        });
        let reply = self.app.client.clone().update_organization(request).await;
        reply.map(|r| r.into_inner().organization.expect("organization"))
    }
}

fn ids(page: &pb::ListMembersResponse) -> Vec<String> {
    page.members
        .iter()
        .map(|m| m.user.as_ref().expect("user").id.clone())
        .collect()
}

/// Walks every page of a listing.
async fn walk(call: &Call<'_>, mut request: pb::ListMembersRequest) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let page = call.list(request.clone()).await.expect("page");
        all.extend(ids(&page));
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

fn list_all() -> pb::ListMembersRequest {
    pb::ListMembersRequest::default()
}

async fn whoami_answers_with_the_account_organization_and_role(backend: Backend) {
    let org = organization(backend).await;

    let owner = call(&org.app, &org.owner.session).whoami().await.unwrap();
    let member = call(&org.app, &org.member.api).whoami().await.unwrap();
    let removed = call(&org.app, &org.removed.api).whoami().await.unwrap();
    let outsider = call(&org.app, &org.outsider.api).whoami().await.unwrap();

    assert_eq!(owner.user.as_ref().unwrap().email, "owner@example.com");
    assert_eq!(owner.role(), pb::MemberRole::Owner);
    assert_eq!(owner.organization.as_ref().unwrap().title, "Label Studio");
    assert_eq!(member.role(), pb::MemberRole::Member);
    assert_eq!(member.organization, owner.organization);
    assert_eq!(removed.user.as_ref().unwrap().id, org.removed.id);
    assert_eq!(removed.organization, None);
    assert_eq!(removed.role(), pb::MemberRole::Unspecified);
    assert_eq!(outsider.role(), pb::MemberRole::Owner);
    assert_eq!(outsider.organization.unwrap().title, "Other");
}

async fn the_authorization_matrix_holds_for_every_new_rpc(backend: Backend) {
    let org = organization(backend).await;
    let (owner, member, removed, outsider) = (&org.owner, &org.member, &org.removed, &org.outsider);
    let anonymous = call(&org.app, "");
    let unknown = call(&org.app, "Token 0123456789abcdef0123456789abcdef01234567");
    let as_member = call(&org.app, &member.api);
    let as_removed = call(&org.app, &removed.api);
    let as_outsider = call(&org.app, &outsider.api);

    // No credentials, or unknown ones: every new RPC refuses before anything else.
    for (caller, code, reason) in [
        (&anonymous, Code::Unauthenticated, "CREDENTIALS_MISSING"),
        (&unknown, Code::Unauthenticated, "TOKEN_INVALID"),
    ] {
        assert_refused(caller.whoami().await, code, reason);
        assert_refused(caller.list(list_all()).await, code, reason);
        assert_refused(caller.get_user(&member.id).await, code, reason);
        assert_refused(
            caller
                .update_profile(pb::UpdateProfileRequest::default())
                .await,
            code,
            reason,
        );
        assert_refused(
            caller.change_password(PASSWORD, "new-password-1").await,
            code,
            reason,
        );
        assert_refused(caller.remove_member(&member.id).await, code, reason);
        assert_refused(caller.restore_member(&removed.id).await, code, reason);
        assert_refused(caller.delete_user(&member.id).await, code, reason);
        assert_refused(caller.rename("Mine").await, code, reason);
    }

    // A member reads the organization but may not change it.
    assert_eq!(as_member.list(list_all()).await.unwrap().total_size, 2);
    assert_eq!(
        as_member.get_user(&owner.id).await.unwrap().role(),
        pb::MemberRole::Owner
    );
    let denied = (Code::PermissionDenied, "OWNER_REQUIRED");
    assert_refused(as_member.remove_member(&owner.id).await, denied.0, denied.1);
    assert_refused(
        as_member.restore_member(&removed.id).await,
        denied.0,
        denied.1,
    );
    assert_refused(as_member.delete_user(&owner.id).await, denied.0, denied.1);
    assert_refused(as_member.rename("Mine").await, denied.0, denied.1);

    // A removed member keeps their account but nothing of the organization.
    let gone = (Code::PermissionDenied, "NOT_A_MEMBER");
    assert_refused(as_removed.list(list_all()).await, gone.0, gone.1);
    assert_refused(as_removed.get_user(&owner.id).await, gone.0, gone.1);
    assert_refused(as_removed.remove_member(&member.id).await, gone.0, gone.1);
    assert_refused(as_removed.restore_member(&removed.id).await, gone.0, gone.1);
    assert_refused(as_removed.delete_user(&member.id).await, gone.0, gone.1);
    assert_refused(as_removed.rename("Mine").await, gone.0, gone.1);
    as_removed
        .update_profile(pb::UpdateProfileRequest {
            first_name: "Still".into(),
            ..Default::default()
        })
        .await
        .expect("their own account stays theirs");
    as_removed
        .change_password(PASSWORD, "removed-new-password")
        .await
        .expect("and so does their password");

    // The owner of another organization sees and touches only their own.
    let outsiders_page = as_outsider.list(list_all()).await.unwrap();
    assert_eq!(ids(&outsiders_page), [outsider.id.as_str()]);
    assert_eq!(outsiders_page.total_size, 1);
    for id in [&owner.id, &member.id, &removed.id, "999999"] {
        assert_refused(
            as_outsider.get_user(id).await,
            Code::NotFound,
            "USER_NOT_FOUND",
        );
        assert_refused(
            as_outsider.delete_user(id).await,
            Code::NotFound,
            "USER_NOT_FOUND",
        );
        assert_refused(
            as_outsider.remove_member(id).await,
            Code::NotFound,
            "MEMBER_NOT_FOUND",
        );
        assert_refused(
            as_outsider.restore_member(id).await,
            Code::NotFound,
            "MEMBER_NOT_FOUND",
        );
    }
    let renamed = as_outsider.rename("Outsiders").await.unwrap();
    assert_eq!(renamed.title, "Outsiders");
    let ours = call(&org.app, &owner.api).whoami().await.unwrap();
    assert_eq!(ours.organization.unwrap().title, "Label Studio");

    // Nothing above changed a membership.
    assert_eq!(
        org.db
            .count("SELECT COUNT(*) FROM memberships WHERE deleted_at IS NULL")
            .await,
        3
    );
    assert_eq!(org.db.count("SELECT COUNT(*) FROM users").await, 4);
}

async fn members_are_listed_in_join_order_page_by_page(backend: Backend) {
    let org = organization(backend).await;
    let mut expected = vec![org.owner.id.clone(), org.member.id.clone()];
    for i in 0..7 {
        let created = org
            .app
            .sign_up(&format!("user{i}@example.com"), PASSWORD)
            .await;
        expected.push(created.user.unwrap().id);
    }
    let owner = call(&org.app, &org.owner.api);

    let first = owner
        .list(pb::ListMembersRequest {
            page_size: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let walked = walk(
        &owner,
        pb::ListMembersRequest {
            page_size: 4,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(first.members.len(), 4);
    assert_eq!(first.total_size, 9);
    assert!(!first.next_page_token.is_empty());
    assert_eq!(walked, expected);
    let owner_entry = &first.members[0];
    assert_eq!(owner_entry.role(), pb::MemberRole::Owner);
    assert_eq!(first.members[1].role(), pb::MemberRole::Member);
    assert!(owner_entry.joined_at.is_some() && owner_entry.removed_at.is_none());
    let everyone = owner.list(list_all()).await.unwrap();
    assert_eq!(ids(&everyone), expected);
    assert!(everyone.next_page_token.is_empty());
}

async fn members_joining_between_pages_neither_repeat_nor_vanish(backend: Backend) {
    let org = organization(backend).await;
    for i in 0..5 {
        org.app
            .sign_up(&format!("early{i}@example.com"), PASSWORD)
            .await;
    }
    let owner = call(&org.app, &org.owner.api);
    let mut request = pb::ListMembersRequest {
        page_size: 2,
        ..Default::default()
    };

    let mut seen = Vec::new();
    let mut joined = Vec::new();
    let mut round = 0;
    loop {
        let page = owner.list(request.clone()).await.unwrap();
        seen.extend(ids(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
        // Someone joins between every two pages.
        let created = org
            .app
            .sign_up(&format!("late{round}@example.com"), PASSWORD)
            .await;
        joined.push(created.user.unwrap().id);
        round += 1;
    }

    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no member repeats: {seen:?}");
    let now = walk(&owner, list_all()).await;
    assert_eq!(seen, now, "the walk saw everyone, in join order");
    for id in &joined {
        assert!(
            seen.contains(id),
            "{id} joined during the walk and was listed"
        );
    }
}

async fn page_size_defaults_to_30_and_clamps_at_1000(backend: Backend) {
    let org = organization(backend).await;
    // 1,100 more members, written directly: signing them up would only cost time.
    let seed = match backend {
        Backend::Postgres => format!(
            "WITH n AS (SELECT generate_series(1, 1100) AS i), \
             u AS (INSERT INTO users (email, username, date_joined, active_organization_id) \
             SELECT 'seed' || i || '@example.com', 'seed' || i, {}, 1 FROM n RETURNING id) \
             INSERT INTO memberships (organization_id, user_id, joined_at) SELECT 1, id, {} FROM u",
            time_sql(backend, 0),
            time_sql(backend, 100)
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1100) \
             INSERT INTO users (email, username, date_joined, active_organization_id) \
             SELECT 'seed' || i || '@example.com', 'seed' || i, {}, 1 FROM n",
            time_sql(backend, 0)
        ),
    };
    org.db.execute(&seed).await;
    if backend == Backend::Sqlite {
        org.db
            .execute(&format!(
                "INSERT INTO memberships (organization_id, user_id, joined_at) \
                 SELECT 1, id, {} FROM users WHERE email LIKE 'seed%'",
                time_sql(backend, 100)
            ))
            .await;
    }
    let owner = call(&org.app, &org.owner.api);

    let default = owner.list(list_all()).await.unwrap();
    let huge = owner
        .list(pb::ListMembersRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    let all = walk(
        &owner,
        pb::ListMembersRequest {
            page_size: 1000,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(default.members.len(), 30);
    assert_eq!(default.total_size, 1102);
    assert_eq!(huge.members.len(), 1000);
    assert_eq!(all.len(), 1102);
    assert_refused(
        owner
            .list(pb::ListMembersRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "PAGE_SIZE_INVALID",
    );
}

async fn a_forged_or_foreign_page_token_is_refused(backend: Backend) {
    let org = organization(backend).await;
    for i in 0..3 {
        org.app
            .sign_up(&format!("ann{i}@example.com"), PASSWORD)
            .await;
    }
    let owner = call(&org.app, &org.owner.api);
    let page = |query: &str, include_removed: bool, page_token: &str| pb::ListMembersRequest {
        page_size: 1,
        query: query.into(),
        include_removed,
        page_token: page_token.into(),
    };
    let token = owner
        .list(page("", false, ""))
        .await
        .unwrap()
        .next_page_token;
    let ann_token = owner
        .list(page("ann", false, ""))
        .await
        .unwrap()
        .next_page_token;
    let outsider = call(&org.app, &org.outsider.api);
    org.app
        .register(OTHER_INVITE, "second@example.com", PASSWORD)
        .await
        .unwrap();
    let foreign = outsider
        .list(page("", false, ""))
        .await
        .unwrap()
        .next_page_token;
    assert!(!foreign.is_empty());

    owner
        .list(page("", false, &token))
        .await
        .expect("its own token works");
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (request, what) in [
        (page("", false, "garbage"), "garbage"),
        (page("", false, &tampered), "a tampered token"),
        (page("", true, &token), "another include_removed"),
        (page("ann", false, &token), "another query"),
        (
            page("", false, &ann_token),
            "a token of a query, without it",
        ),
        (page("", false, &foreign), "another organization's token"),
    ] {
        let status = assert_refused(
            owner.list(request).await,
            Code::InvalidArgument,
            "PAGE_TOKEN_INVALID",
        );
        assert_eq!(
            crate::helpers::violated_fields(&status),
            ["page_token"],
            "{what}"
        );
    }
}

async fn a_page_token_works_on_another_replica(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);
    let first = owner
        .list(pb::ListMembersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let replica = TestApp::start(org.db.settings()).await;

    let second = call(&replica, &org.owner.api)
        .list(pb::ListMembersRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("the other replica takes the token");

    assert_eq!(ids(&second), [org.member.id.as_str()]);
    assert_eq!(org.db.count("SELECT COUNT(*) FROM server_secrets").await, 1);
}

async fn search_matches_email_username_and_names_in_any_case(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);
    let mut zed = org.app.sign_up("zed@example.org", PASSWORD).await;
    let zed_id = zed.user.take().unwrap().id;
    call(&org.app, &format!("Token {}", zed.api_token))
        .update_profile(pb::UpdateProfileRequest {
            first_name: "Zedekiah".into(),
            last_name: "O'Hara".into(),
            username: "zz_top".into(),
            update_mask: None,
        })
        .await
        .unwrap();
    let search = |query: &str| pb::ListMembersRequest {
        query: query.into(),
        ..Default::default()
    };

    for query in ["ZED@", "zedek", "o'hara", "ZZ_TOP", "  Hara "] {
        let page = owner.list(search(query)).await.unwrap();
        assert_eq!(ids(&page), [zed_id.as_str()], "{query}");
        assert_eq!(page.total_size, 1, "{query}");
    }
    let example = owner.list(search("EXAMPLE.COM")).await.unwrap();
    assert_eq!(ids(&example), [org.owner.id.clone(), org.member.id.clone()]);
    assert_eq!(example.total_size, 2);
    // Wildcards are literal, and a query never spans two fields.
    for query in ["%", "z_d", "org zed", "zedekiah o"] {
        let page = owner.list(search(query)).await.unwrap();
        assert!(page.members.is_empty(), "{query}");
        assert_eq!(page.total_size, 0, "{query}");
    }
    let with_removed = owner
        .list(pb::ListMembersRequest {
            query: "removed".into(),
            include_removed: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&with_removed), [org.removed.id.as_str()]);
    assert_refused(
        owner.list(search("a\u{7}b")).await,
        Code::InvalidArgument,
        "QUERY_INVALID",
    );
}

async fn removed_members_appear_only_with_include_removed(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);

    let current = owner.list(list_all()).await.unwrap();
    let everyone = owner
        .list(pb::ListMembersRequest {
            include_removed: true,
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(ids(&current), [org.owner.id.clone(), org.member.id.clone()]);
    assert_eq!(current.total_size, 2);
    assert_eq!(
        ids(&everyone),
        [
            org.owner.id.clone(),
            org.member.id.clone(),
            org.removed.id.clone()
        ]
    );
    assert_eq!(everyone.total_size, 3);
    let removed = &everyone.members[2];
    assert!(removed.removed_at.is_some());
    assert!(removed.user.as_ref().unwrap().organization_id.is_empty());
    assert!(everyone.members[..2].iter().all(|m| m.removed_at.is_none()));
}

async fn get_user_returns_members_and_hides_everyone_else(backend: Backend) {
    let org = organization(backend).await;
    let member = call(&org.app, &org.member.session);

    let owner = member.get_user(&org.owner.id).await.unwrap();
    let removed = member.get_user(&org.removed.id).await.unwrap();

    assert_eq!(owner.user.as_ref().unwrap().email, "owner@example.com");
    assert_eq!(owner.role(), pb::MemberRole::Owner);
    assert!(removed.removed_at.is_some());
    for id in [org.outsider.id.as_str(), "424242"] {
        assert_refused(member.get_user(id).await, Code::NotFound, "USER_NOT_FOUND");
    }
    for id in ["", "abc", "-1", "0"] {
        assert_refused(
            member.get_user(id).await,
            Code::InvalidArgument,
            "USER_ID_INVALID",
        );
    }
}

async fn removing_a_member_ends_their_sessions_and_their_organization_calls(backend: Backend) {
    let org = organization(backend).await;
    let login = org.app.login("member@example.com", PASSWORD).await.unwrap();
    let owner = call(&org.app, &org.owner.api);

    owner.remove_member(&org.member.id).await.expect("removed");

    for session in [
        &org.member.session,
        &format!("Bearer {}", login.session_token),
    ] {
        assert_refused(
            call(&org.app, session).whoami().await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    let api = org
        .app
        .token_login(org.member.api.trim_start_matches("Token "))
        .await;
    assert!(
        api.expect("the API token still authenticates")
            .organization
            .is_none()
    );
    assert_refused(
        call(&org.app, &org.member.api).list(list_all()).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    assert_refused(
        org.app.invite_link(&org.member.api).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    assert_eq!(
        org.db
            .count(&format!(
                "SELECT COUNT(*) FROM tokens WHERE kind = 'session' AND user_id = {}",
                org.member.id
            ))
            .await,
        0
    );
    let again = owner.remove_member(&org.member.id).await;
    assert_refused(again, Code::NotFound, "MEMBER_NOT_FOUND");
}

async fn removing_oneself_or_an_unknown_member_is_refused(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);

    assert_refused(
        owner.remove_member(&org.owner.id).await,
        Code::FailedPrecondition,
        "CANNOT_REMOVE_SELF",
    );
    assert_refused(
        owner.remove_member("31337").await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
    assert_refused(
        owner.remove_member(&org.removed.id).await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
    assert_refused(
        owner.remove_member("x").await,
        Code::InvalidArgument,
        "USER_ID_INVALID",
    );
    assert_refused(
        owner.restore_member(&org.member.id).await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
}

async fn a_removed_member_registering_again_is_refused_as_email_taken(backend: Backend) {
    let org = organization(backend).await;
    let link = org.app.invite_link(&org.owner.api).await.unwrap();

    let again = org
        .app
        .register(&link.token, "removed@example.com", PASSWORD)
        .await;

    assert_refused(again, Code::AlreadyExists, "EMAIL_TAKEN");
}

async fn restoring_a_member_brings_them_back(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);

    owner
        .restore_member(&org.removed.id)
        .await
        .expect("restored");

    let back = call(&org.app, &org.removed.api).whoami().await.unwrap();
    assert_eq!(back.role(), pb::MemberRole::Member);
    assert!(back.organization.is_some());
    let page = owner.list(list_all()).await.unwrap();
    assert_eq!(page.total_size, 3);
    assert!(
        owner
            .get_user(&org.removed.id)
            .await
            .unwrap()
            .removed_at
            .is_none()
    );
    assert_refused(
        owner.restore_member(&org.removed.id).await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
}

async fn deleting_a_user_removes_the_account_but_not_its_audit_trail(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);
    let id = org.member.id.clone();

    owner.delete_user(&id).await.expect("deleted");

    for table in [
        "users WHERE id",
        "tokens WHERE user_id",
        "memberships WHERE user_id",
    ] {
        assert_eq!(
            org.db
                .count(&format!("SELECT COUNT(*) FROM {table} = {id}"))
                .await,
            0,
            "{table}"
        );
    }
    assert!(
        org.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE user_id = {id} AND event = 'user.delete'"
            ))
            .await
            == 1
    );
    assert!(
        org.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE user_id = {id}"
            ))
            .await
            > 1,
        "earlier events stay"
    );
    assert_refused(
        org.app
            .token_login(org.member.api.trim_start_matches("Token "))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(owner.get_user(&id).await, Code::NotFound, "USER_NOT_FOUND");
    assert_refused(
        owner.delete_user(&id).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    // The email is free again.
    org.app.sign_up("member@example.com", PASSWORD).await;
    // A removed member may be deleted too.
    owner.delete_user(&org.removed.id).await.expect("deleted");
    assert_eq!(
        owner
            .list(pb::ListMembersRequest {
                include_removed: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .total_size,
        2
    );
}

async fn deleting_an_imported_user_drops_the_label_studio_mapping(backend: Backend) {
    let org = organization(backend).await;
    org.db
        .execute(&format!(
            "INSERT INTO label_studio_users (label_studio_id, label_studio_date_joined, user_id, \
             imported_at) VALUES (7, {}, {}, {})",
            time_sql(backend, 0),
            org.member.id,
            time_sql(backend, 1)
        ))
        .await;

    call(&org.app, &org.owner.api)
        .delete_user(&org.member.id)
        .await
        .expect("deleted");

    assert_eq!(
        org.db
            .count("SELECT COUNT(*) FROM label_studio_users")
            .await,
        0
    );
}

/// Label Studio's `users/tests/test_authz_api.py`.
async fn label_studio_authorization_cases_hold(backend: Backend) {
    let org = organization(backend).await;
    let other = org.app.sign_up("other@example.com", PASSWORD).await;
    let other_id = other.user.unwrap().id;
    let as_member = call(&org.app, &org.member.api);
    let as_owner = call(&org.app, &org.owner.api);

    // A member deleting another member is refused.
    assert_refused(
        as_member.delete_user(&other_id).await,
        Code::PermissionDenied,
        "OWNER_REQUIRED",
    );
    // A member deleting themself is refused.
    assert_refused(
        as_member.delete_user(&org.member.id).await,
        Code::PermissionDenied,
        "OWNER_REQUIRED",
    );
    // The owner deleting a member succeeds and the member is gone.
    as_owner.delete_user(&other_id).await.expect("deleted");
    assert_refused(
        as_owner.get_user(&other_id).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    // The owner deleting themself is refused and the organization keeps its owner.
    assert_refused(
        as_owner.delete_user(&org.owner.id).await,
        Code::FailedPrecondition,
        "OWNER_CANNOT_BE_DELETED",
    );
    let still = as_owner.whoami().await.unwrap();
    assert_eq!(
        still.organization.as_ref().unwrap().created_by_user_id,
        org.owner.id
    );
    assert_eq!(still.role(), pb::MemberRole::Owner);
    assert_eq!(
        org.db
            .count(&format!(
                "SELECT COUNT(*) FROM users WHERE id = {}",
                org.member.id
            ))
            .await,
        1
    );
}

async fn the_owner_renames_the_organization_within_the_title_rules(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.session);

    let renamed = owner.rename("  Acme Labelling  ").await.unwrap();

    assert_eq!(renamed.title, "Acme Labelling");
    assert_eq!(renamed.created_by_user_id, org.owner.id);
    let seen = call(&org.app, &org.member.api).whoami().await.unwrap();
    assert_eq!(seen.organization.unwrap().title, "Acme Labelling");
    for bad in ["", "   ", "a\nb", &"t".repeat(1001)] {
        let status = assert_refused(
            owner.rename(bad).await,
            Code::InvalidArgument,
            "TITLE_INVALID",
        );
        assert_eq!(crate::helpers::violated_fields(&status), ["title"]);
    }
    owner
        .rename(&"t".repeat(1000))
        .await
        .expect("1000 characters");
}

async fn every_change_writes_an_audit_event(backend: Backend) {
    let org = organization(backend).await;
    let owner = call(&org.app, &org.owner.api);
    let member = call(&org.app, &org.member.api);

    member
        .update_profile(pb::UpdateProfileRequest {
            first_name: "Mia".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    member
        .change_password(PASSWORD, "a-new-password")
        .await
        .unwrap();
    owner.restore_member(&org.removed.id).await.unwrap();
    owner.remove_member(&org.removed.id).await.unwrap();
    owner.delete_user(&org.removed.id).await.unwrap();
    owner.rename("Renamed").await.unwrap();

    for (event, user) in [
        ("profile.update", &org.member.id),
        ("password.change", &org.member.id),
        ("member.restore", &org.removed.id),
        ("member.remove", &org.removed.id),
        ("user.delete", &org.removed.id),
        ("organization.update", &org.owner.id),
    ] {
        let rows = org
            .db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE event = '{event}' AND user_id = {user} \
                 AND outcome = 'success'"
            ))
            .await;
        assert!(rows >= 1, "{event}");
    }
}

on_both_backends!(
    whoami_answers_with_the_account_organization_and_role,
    the_authorization_matrix_holds_for_every_new_rpc,
    members_are_listed_in_join_order_page_by_page,
    members_joining_between_pages_neither_repeat_nor_vanish,
    page_size_defaults_to_30_and_clamps_at_1000,
    a_forged_or_foreign_page_token_is_refused,
    a_page_token_works_on_another_replica,
    search_matches_email_username_and_names_in_any_case,
    removed_members_appear_only_with_include_removed,
    get_user_returns_members_and_hides_everyone_else,
    removing_a_member_ends_their_sessions_and_their_organization_calls,
    removing_oneself_or_an_unknown_member_is_refused,
    a_removed_member_registering_again_is_refused_as_email_taken,
    restoring_a_member_brings_them_back,
    deleting_a_user_removes_the_account_but_not_its_audit_trail,
    deleting_an_imported_user_drops_the_label_studio_mapping,
    label_studio_authorization_cases_hold,
    the_owner_renames_the_organization_within_the_title_rules,
    every_change_writes_an_audit_event,
);
