//! The organization's invite link: read it, reset it.

use super::{Accounts, AccountsError, Context, InviteLink, audit::Audit, member_of};
use crate::{domain::InviteToken, store::Principal};

impl Accounts {
    pub async fn invite_link(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = self.db(ctx, self.store.invite_token(organization)).await?;
        Ok(self.link(token))
    }

    /// Replaces the link; the old one stops working at once.
    pub async fn reset_invite_link(
        &self,
        caller: &Principal,
        ctx: &Context,
    ) -> Result<InviteLink, AccountsError> {
        let organization = member_of(caller)?;
        let token = InviteToken::generate();
        self.db(ctx, self.store.replace_invite_token(organization, &token))
            .await?;
        self.audit(
            ctx,
            Audit::success("invite_reset", Some(caller.account.user.id)),
        )
        .await;
        Ok(self.link(token))
    }
}
