//! The owner's tools for members: remove one (Label Studio's soft delete), bring one back, and
//! delete an account for good (Label Studio's hard delete).

use super::{
    Accounts, AccountsError, Context,
    audit::{self, Audit},
    owner_of,
};
use crate::{
    domain::{UserId, parse_user_id},
    store::{Deletion, Principal},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Remove,
    Restore,
}

impl Accounts {
    /// `RemoveMember`: the membership stays, marked removed; the member's sessions end at once.
    pub async fn remove_member(
        &self,
        caller: &Principal,
        user_id: &str,
        ctx: &Context,
    ) -> Result<UserId, AccountsError> {
        self.change_membership(caller, user_id, Change::Remove, ctx)
            .await
    }

    /// `RestoreMember`: a removed member acts in the organization again.
    pub async fn restore_member(
        &self,
        caller: &Principal,
        user_id: &str,
        ctx: &Context,
    ) -> Result<UserId, AccountsError> {
        self.change_membership(caller, user_id, Change::Restore, ctx)
            .await
    }

    async fn change_membership(
        &self,
        caller: &Principal,
        user_id: &str,
        change: Change,
        ctx: &Context,
    ) -> Result<UserId, AccountsError> {
        let organization = owner_of(caller)?.id;
        let user = parse_user_id(user_id).map_err(AccountsError::invalid("user_id"))?;
        if change == Change::Remove && user == caller.account.user.id {
            return Err(AccountsError::CannotRemoveSelf);
        }
        let client = ctx.client.to_string();
        let name = match change {
            Change::Remove => "member.remove",
            Change::Restore => "member.restore",
        };
        let event = Audit::success(name, Some(user)).event(ctx.now, &client);
        let changed = match change {
            Change::Remove => {
                self.db(ctx, self.store.remove_member(organization, user, &event))
                    .await?
            }
            Change::Restore => {
                self.db(ctx, self.store.restore_member(organization, user, &event))
                    .await?
            }
        };
        if !changed {
            return Err(AccountsError::MemberNotFound);
        }
        audit::log(&event);
        Ok(user)
    }

    /// `DeleteUser`: the account, its tokens, sessions and memberships go together; the audit
    /// trail keeps its events under the user's id. The owner stays.
    pub async fn delete_user(
        &self,
        caller: &Principal,
        user_id: &str,
        ctx: &Context,
    ) -> Result<UserId, AccountsError> {
        let organization = owner_of(caller)?;
        let user = parse_user_id(user_id).map_err(AccountsError::invalid("user_id"))?;
        if organization.created_by_user_id == Some(user) {
            return Err(AccountsError::OwnerCannotBeDeleted);
        }
        let client = ctx.client.to_string();
        let event = Audit::success("user.delete", Some(user)).event(ctx.now, &client);
        match self
            .db(ctx, self.store.delete_user(organization.id, user, &event))
            .await?
        {
            Deletion::Deleted => {
                audit::log(&event);
                Ok(user)
            }
            Deletion::NotFound => Err(AccountsError::UserNotFound),
            Deletion::Owner => Err(AccountsError::OwnerCannotBeDeleted),
        }
    }
}
