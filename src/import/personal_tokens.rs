//! The PAT side of an import: each organization's JWT settings, and the PATs Label Studio
//! issued (live and revoked alike), which keep working here when Label Studio's `SECRET_KEY`
//! comes along, kept as a key that only verifies them. Without the key no PAT is imported, and
//! the report says so.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest, Sha256};

use super::{
    plan::{Fate, Plan},
    report::Kind,
    source::LabelStudioData,
};
use crate::{
    accounts::MAX_TTL_DAYS,
    domain::jwt::{Parts, RefreshClaims},
    store::{TokenSettings, import::Existing},
};

/// Label Studio's secret key, as it is stored here: verification only.
#[derive(Clone)]
pub struct LabelStudioSigningKey {
    pub kid: String,
    /// The key's bytes (UTF-8, as Django uses them), base64url.
    pub secret: SecretString,
}

impl LabelStudioSigningKey {
    /// The same key always gets the same id, so that re-runs store it once.
    pub fn new(secret: &SecretString) -> Self {
        use base64::Engine as _;
        let digest = Sha256::digest(secret.expose_secret().as_bytes());
        Self {
            kid: format!("label-studio-{}", hex::encode(&digest[..6])),
            secret: SecretString::from(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(secret.expose_secret().as_bytes()),
            ),
        }
    }
}

/// A Label Studio PAT to record, its user still in Label Studio ids.
#[derive(Debug, Clone)]
pub struct PlannedPersonalToken {
    pub user: i64,
    pub jti: String,
    pub token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The settings of the organizations this run writes.
pub(super) fn plan_token_settings(
    data: &LabelStudioData,
    organizations: &HashMap<i64, Fate>,
    plan: &mut Plan,
) {
    for row in &data.jwt_settings {
        match organizations
            .get(&row.organization_id)
            .copied()
            .unwrap_or(Fate::Left)
        {
            Fate::New => {}
            Fate::Known => {
                plan.report.skipped(
                    Kind::TokenSettings,
                    "their organization was imported by an earlier run; the settings here stay",
                );
                continue;
            }
            Fate::Left => {
                plan.report
                    .skipped(Kind::TokenSettings, "their organization was not imported");
                continue;
            }
        }
        let days = i32::try_from(row.api_token_ttl_days.clamp(1, i64::from(MAX_TTL_DAYS)))
            .unwrap_or(MAX_TTL_DAYS);
        if !row.legacy_api_tokens_enabled {
            plan.report.note(
                "organizations with legacy API tokens switched off, as in Label Studio (their \
                 members' API tokens answer LEGACY_TOKENS_DISABLED until the owner switches them \
                 on with UpdateTokenSettings)",
                format!("organization {}", row.organization_id),
            );
        }
        plan.report.imported(Kind::TokenSettings);
        plan.token_settings.push((
            row.organization_id,
            TokenSettings {
                api_tokens_enabled: row.api_tokens_enabled,
                legacy_api_tokens_enabled: row.legacy_api_tokens_enabled,
                api_token_ttl_days: days,
            },
        ));
    }
}

/// The PATs of users imported now or before, unless recorded here already; none without the
/// secret key, which is all that makes them whole again.
pub(super) fn plan_personal_tokens(
    data: &LabelStudioData,
    existing: &Existing,
    users: &HashMap<i64, Fate>,
    plan: &mut Plan,
) {
    if data.secret_key.is_none() && !data.personal_tokens.is_empty() {
        plan.report.note(
            "personal access tokens not imported: Label Studio's secret key was not given \
             (--label-studio-secret-key or --label-studio-data-dir); run the import again with it",
            format!("{} PATs", data.personal_tokens.len()),
        );
    }
    for pat in &data.personal_tokens {
        let fate = pat
            .user_id
            .and_then(|user| users.get(&user).copied())
            .unwrap_or(Fate::Left);
        if fate == Fate::Left {
            plan.report
                .skipped(Kind::PersonalTokens, "their user was not imported");
            continue;
        }
        if existing.jtis.contains(&pat.jti) {
            plan.report
                .skipped(Kind::PersonalTokens, "imported by an earlier run");
            continue;
        }
        if data.secret_key.is_none() {
            plan.report.skipped(
                Kind::PersonalTokens,
                "Label Studio's secret key was not given",
            );
            continue;
        }
        let claims = Parts::split(&pat.token, true)
            .ok()
            .and_then(|parts| parts.claims::<RefreshClaims>().ok());
        let (Some(claims), Some(user)) = (claims, pat.user_id) else {
            plan.report.skipped(
                Kind::PersonalTokens,
                "not a token Label Studio could have issued",
            );
            continue;
        };
        if claims.jti != pat.jti || claims.user_id.0 != user {
            plan.report.skipped(
                Kind::PersonalTokens,
                "not a token Label Studio could have issued",
            );
            continue;
        }
        plan.report.imported(Kind::PersonalTokens);
        plan.personal_tokens.push(PlannedPersonalToken {
            user,
            jti: pat.jti.clone(),
            token: pat.token.clone(),
            created_at: pat
                .created_at
                .or_else(|| DateTime::from_timestamp(claims.iat, 0))
                .unwrap_or(pat.expires_at),
            expires_at: pat.expires_at,
            revoked_at: pat.blacklisted_at,
        });
    }
    if !plan.personal_tokens.is_empty() {
        plan.label_studio_key = data.secret_key.as_ref().map(LabelStudioSigningKey::new);
    }
}
