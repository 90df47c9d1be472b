//! The owner renames the organization.

use super::{
    Accounts, AccountsError, Context,
    audit::{self, Audit},
    owner_of,
};
use crate::{
    domain::{Organization, OrganizationTitle},
    store::Principal,
};

impl Accounts {
    /// `UpdateOrganization`: a new title.
    pub async fn update_organization(
        &self,
        caller: &Principal,
        title: &str,
        ctx: &Context,
    ) -> Result<Organization, AccountsError> {
        let organization = owner_of(caller)?.id;
        let title = OrganizationTitle::parse(title).map_err(AccountsError::invalid("title"))?;
        let client = ctx.client.to_string();
        let event = Audit::success("organization.update", Some(caller.account.user.id))
            .event(ctx.now, &client);
        let updated = self
            .db(
                ctx,
                self.store
                    .update_organization(organization, title.as_str(), &event),
            )
            .await?;
        audit::log(&event);
        Ok(updated)
    }
}
