//! `import-label-studio`: carries a Label Studio user base over — users with their passwords,
//! API tokens, personal access tokens (given Label Studio's secret key), organizations with
//! their token settings, memberships and current invite links — so that nobody has to reset
//! anything on the day of the switch.
//!
//! Label Studio's database is read read-only ([`source`]), the import is planned without IO
//! against what the target already holds ([`plan`]), and written in one transaction through
//! the store's import capability ([`crate::store::import`]): all of it or, when interrupted,
//! none of it.

mod personal_tokens;
mod plan;
mod progress;
mod report;
mod source;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

pub use report::{Counts, Kind, Report};
pub use source::{Source, secret_key_from_data_dir};

use self::{
    plan::{Plan, PlannedToken},
    progress::Progress,
};
use crate::{
    config::Settings,
    domain::{ApiToken, OrganizationId, UserId},
    store::{
        KeyPurpose, NewKey, PersonalToken, StoreError, Unique,
        import::{
            Access, BATCH_ROWS, ImportTransaction, ImportedMembership, ImportedToken, ImportedUser,
        },
    },
};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Label Studio's database URL (it may hold a password, so it is never shown).
    pub from: String,
    /// Plan and report only: nothing is written, not even the schema.
    pub dry_run: bool,
    /// Label Studio's `SECRET_KEY`, which signed its PATs; without it no PAT is imported.
    pub secret_key: Option<secrecy::SecretString>,
}

/// Imports the Label Studio database `options.from` names into the store `settings` name.
pub async fn run(settings: &Settings, options: &Options) -> anyhow::Result<Report> {
    let source = Source::parse(&options.from)?;
    let mut data = source::read(&source).await?;
    data.secret_key = options.secret_key.clone();
    tracing::info!(
        users = data.users.len(),
        organizations = data.organizations.len(),
        memberships = data.memberships.len(),
        "read label studio"
    );
    let access = if options.dry_run {
        Access::ReadOnly
    } else {
        Access::Write
    };
    let target = crate::store::import::connect(settings, access).await?;
    target
        .migrate()
        .await
        .map_err(|e| anyhow::Error::new(e).context("migrations failed"))?;

    let mut tx = target.begin().await?;
    let existing = tx.existing(&plan::lookup(&data)).await?;
    let plan = plan::plan(&data, &existing);
    let mut report = plan.report.clone();
    report.source = source.describe();
    report.dry_run = options.dry_run;
    if options.dry_run || plan.rows() == 0 {
        // Dropping the transaction rolls it back.
        return Ok(report);
    }
    write(tx.as_mut(), &plan, crate::accounts::now())
        .await
        .map_err(explain)?;
    tx.commit().await.map_err(explain)?;
    tracing::info!(
        users = report.counts(Kind::Users).imported,
        organizations = report.counts(Kind::Organizations).imported,
        "label studio import committed"
    );
    Ok(report)
}

/// Writes the plan: organizations first (owners come last, once their users exist), then users
/// in batches, then their tokens and memberships.
async fn write(
    tx: &mut dyn ImportTransaction,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let progress = Progress::new(plan.rows());

    progress.stage("organizations");
    let mut organizations: HashMap<i64, OrganizationId> = plan.known_organizations.clone();
    let ids = tx.insert_organizations(&plan.organizations, now).await?;
    for (organization, id) in plan.organizations.iter().zip(ids) {
        organizations.insert(organization.key.id, id);
    }
    progress.advance(plan.organizations.len());

    progress.stage("users");
    let mut users: HashMap<i64, UserId> = plan.known_users.clone();
    for chunk in plan.users.chunks(BATCH_ROWS) {
        let rows: Vec<ImportedUser> = chunk
            .iter()
            .map(|user| ImportedUser {
                key: user.key,
                email: user.email.clone(),
                username: user.username.clone(),
                first_name: user.first_name.clone(),
                last_name: user.last_name.clone(),
                password_hash: user.password_hash.clone(),
                is_active: user.is_active,
                active_organization_id: user
                    .active_organization
                    .and_then(|id| organizations.get(&id).copied()),
            })
            .collect();
        let ids = tx.insert_users(&rows, now).await?;
        for (user, id) in chunk.iter().zip(ids) {
            users.insert(user.key.id, id);
        }
        progress.advance(chunk.len());
    }

    let owners: Vec<(OrganizationId, UserId)> = plan
        .owners
        .iter()
        .filter_map(|(org, user)| Some((*organizations.get(org)?, *users.get(user)?)))
        .collect();
    tx.set_owners(&owners).await?;

    progress.stage("api tokens");
    for chunk in plan.tokens.chunks(BATCH_ROWS) {
        let rows: Vec<ImportedToken> = chunk
            .iter()
            .filter_map(|token| match token {
                PlannedToken::Kept {
                    user,
                    token,
                    created_at,
                } => Some(ImportedToken {
                    user_id: *users.get(user)?,
                    token: token.clone(),
                    created_at: *created_at,
                }),
                PlannedToken::Generated { user } => Some(ImportedToken {
                    user_id: *users.get(user)?,
                    token: ApiToken::generate().hash(),
                    created_at: now,
                }),
            })
            .collect();
        tx.insert_tokens(&rows).await?;
        progress.advance(chunk.len());
    }

    progress.stage("memberships");
    for chunk in plan.memberships.chunks(BATCH_ROWS) {
        let rows: Vec<ImportedMembership> = chunk
            .iter()
            .filter_map(|membership| {
                Some(ImportedMembership {
                    organization_id: *organizations.get(&membership.organization)?,
                    user_id: *users.get(&membership.user)?,
                    joined_at: membership.joined_at,
                    deleted_at: membership.deleted_at,
                })
            })
            .collect();
        tx.insert_memberships(&rows).await?;
        progress.advance(chunk.len());
    }

    progress.stage("token settings");
    let settings: Vec<_> = plan
        .token_settings
        .iter()
        .filter_map(|(org, settings)| Some((*organizations.get(org)?, *settings)))
        .collect();
    tx.insert_token_settings(&settings).await?;
    progress.advance(plan.token_settings.len());

    if let Some(key) = &plan.label_studio_key {
        progress.stage("personal access tokens");
        use secrecy::ExposeSecret as _;
        tx.insert_signing_key(&NewKey {
            kid: &key.kid,
            purpose: KeyPurpose::LabelStudio,
            algorithm: "HS256",
            private_key: key.secret.expose_secret(),
            public_key: None,
            now,
        })
        .await?;
        let rows: Vec<PersonalToken> = plan
            .personal_tokens
            .iter()
            .filter_map(|pat| {
                Some(PersonalToken {
                    jti: pat.jti.clone(),
                    user_id: *users.get(&pat.user)?,
                    token: pat.token.clone(),
                    key_id: key.kid.clone(),
                    created_at: pat.created_at,
                    expires_at: pat.expires_at,
                    revoked_at: pat.revoked_at,
                })
            })
            .collect();
        tx.insert_personal_tokens(&rows).await?;
        progress.advance(plan.personal_tokens.len());
    }
    progress.finish();
    Ok(())
}

/// Turns a failed write into what the operator can do about it. Nothing was written either way.
fn explain(error: StoreError) -> anyhow::Error {
    let taken = match &error {
        StoreError::Conflict(Unique::Email) => Some("an email"),
        StoreError::Conflict(Unique::Token) => Some("an API token"),
        StoreError::Conflict(Unique::InviteToken) => Some("an invite token"),
        _ => None,
    };
    match taken {
        Some(what) => anyhow::anyhow!(
            "{what} being imported was taken here while the import ran; nothing was imported: \
             run the import again"
        ),
        None => anyhow::Error::new(error).context("the import failed; nothing was imported"),
    }
}
