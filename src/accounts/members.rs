//! Who am I, and the People page: the members of the caller's organization, page by page, and
//! one member at a time.

use super::{Accounts, AccountsError, Context, member_of};
use crate::{
    domain::{
        Account, Listing, Member, MemberQuery, MemberRole, PageCursor, PageTokens, page_size,
        parse_user_id,
    },
    store::{MemberListing, Principal},
};

/// Where the key that signs page tokens is kept, shared by every replica.
const PAGE_TOKEN_KEY: &str = "page_token_key";

/// What the People page asks for, as the caller sent it.
#[derive(Debug, Clone, Default)]
pub struct MemberSearch {
    pub page_size: i32,
    pub page_token: String,
    pub query: String,
    pub include_removed: bool,
}

/// One page of members.
#[derive(Debug, Clone)]
pub struct MembersPage {
    pub members: Vec<Member>,
    /// Empty on the last page.
    pub next_page_token: String,
    pub total_size: i64,
}

/// The caller's account and their role in the organization they act in.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub account: Account,
    pub role: Option<MemberRole>,
}

impl Accounts {
    /// `GetCurrentUser`: Label Studio's whoami.
    pub fn current_user(&self, caller: Principal) -> CurrentUser {
        let role = caller.account.organization.as_ref().map(|organization| {
            MemberRole::of(caller.account.user.id, organization.created_by_user_id)
        });
        CurrentUser {
            account: caller.account,
            role,
        }
    }

    /// `ListMembers`: the caller's organization in join order. The walk goes on after the last
    /// member of the previous page, so members joining meanwhile neither repeat nor vanish.
    pub async fn list_members(
        &self,
        caller: &Principal,
        search: MemberSearch,
        ctx: &Context,
    ) -> Result<MembersPage, AccountsError> {
        let organization = member_of(caller)?;
        let size = page_size(search.page_size).map_err(AccountsError::invalid("page_size"))?;
        let query = MemberQuery::parse(&search.query).map_err(AccountsError::invalid("query"))?;
        let listing = Listing {
            organization,
            query: query.as_ref(),
            include_removed: search.include_removed,
        };
        let tokens = self.page_tokens(ctx).await?;
        let after = if search.page_token.is_empty() {
            None
        } else {
            Some(
                tokens
                    .check(&listing, &search.page_token)
                    .map_err(AccountsError::invalid("page_token"))?,
            )
        };
        let pattern = query.as_ref().map(MemberQuery::like_pattern);
        let page = self
            .db(
                ctx,
                self.store.list_members(&MemberListing {
                    organization,
                    pattern: pattern.as_deref(),
                    include_removed: search.include_removed,
                    after,
                    limit: size + 1,
                }),
            )
            .await?;
        let mut members = page.members;
        let next_page_token = if members.len() > size as usize {
            members.truncate(size as usize);
            members
                .last()
                .map(|last| {
                    tokens.issue(
                        &listing,
                        PageCursor {
                            joined_at: last.joined_at,
                            user_id: last.user.id,
                        },
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(MembersPage {
            members,
            next_page_token,
            total_size: page.total,
        })
    }

    /// `GetUser`: a member of the caller's organization, removed ones too; anyone else is
    /// unknown, whether or not the account exists.
    pub async fn get_user(
        &self,
        caller: &Principal,
        user_id: &str,
        ctx: &Context,
    ) -> Result<Member, AccountsError> {
        let organization = member_of(caller)?;
        let user = parse_user_id(user_id).map_err(AccountsError::invalid("user_id"))?;
        self.db(ctx, self.store.member(organization, user))
            .await?
            .ok_or(AccountsError::UserNotFound)
    }

    /// The page-token signer, with the key every replica shares: read (or stored, by the first
    /// replica to need it) once per process.
    async fn page_tokens(&self, ctx: &Context) -> Result<&PageTokens, AccountsError> {
        self.page_tokens
            .get_or_try_init(|| async {
                let candidate = crate::domain::random_hex(32);
                let key = self
                    .db(
                        ctx,
                        self.store
                            .server_secret(PAGE_TOKEN_KEY, &candidate, ctx.now),
                    )
                    .await?;
                Ok(PageTokens::new(key.as_bytes()))
            })
            .await
    }
}
