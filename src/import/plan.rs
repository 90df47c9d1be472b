//! Decides, without any IO, what an import writes: which Label Studio rows are new, which an
//! earlier run imported (skipped) and which clash with what the target holds (conflicts), and
//! how each new row looks here. The rules:
//!
//! - A user or organization is known by its Label Studio key (id and creation time); one an
//!   earlier run imported is skipped with everything hanging off it, so a re-run writes nothing
//!   twice and never undoes a change made here since (a reset token or invite link stays reset).
//! - Emails are lowercased. Label Studio users whose emails differ only by case, and users whose
//!   email an account here already has, are conflicts: none of them is imported.
//! - Django password hashes are kept as they are and verified at login; an empty or unusable
//!   one, or one this service can't verify, imports as "no password" (log in after a reset).
//! - Memberships keep their soft delete: a removed member is imported as removed.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;

use super::{
    personal_tokens::{self, LabelStudioSigningKey, PlannedPersonalToken},
    report::{Kind, Report},
    source::{LabelStudioData, SourceUser},
};
use crate::{
    domain::{Email, InviteToken, OrganizationId, PersonName, TokenHash, UserId, Username},
    password::django::{self, Stored},
    store::{
        TokenSettings,
        import::{Existing, ImportedOrganization, LabelStudioKey, Lookup},
    },
};

/// The longest token authentication accepts.
const MAX_TOKEN_BYTES: usize = 512;
const MAX_NAME_CHARS: usize = 256;

/// A new user, before the ids of the organizations written with it are known.
#[derive(Clone)]
pub struct PlannedUser {
    pub key: LabelStudioKey,
    pub email: Email,
    pub username: Username,
    pub first_name: PersonName,
    pub last_name: PersonName,
    pub password_hash: Option<String>,
    pub is_active: bool,
    /// The Label Studio organization the user acts in here, if any.
    pub active_organization: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum PlannedToken {
    /// The Label Studio key, hashed: it keeps working as `Authorization: Token <key>`.
    Kept {
        user: i64,
        token: TokenHash,
        created_at: DateTime<Utc>,
    },
    /// A user whose token could not come along gets a random one no one knows, as every
    /// account has one; it can be replaced with `ResetApiToken` after a login.
    Generated { user: i64 },
}

#[derive(Debug, Clone)]
pub struct PlannedMembership {
    pub organization: i64,
    pub user: i64,
    pub joined_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What to write, in Label Studio ids, and the report of it.
pub struct Plan {
    pub organizations: Vec<ImportedOrganization>,
    pub users: Vec<PlannedUser>,
    /// (organization, owner) for the new organizations whose owner is here.
    pub owners: Vec<(i64, i64)>,
    pub tokens: Vec<PlannedToken>,
    pub memberships: Vec<PlannedMembership>,
    /// Label Studio users and organizations an earlier run imported, and their ids here.
    pub known_users: HashMap<i64, UserId>,
    pub known_organizations: HashMap<i64, OrganizationId>,
    /// (organization, its settings) for the new organizations Label Studio has settings of.
    pub token_settings: Vec<(i64, TokenSettings)>,
    pub personal_tokens: Vec<PlannedPersonalToken>,
    /// Label Studio's key, when PATs signed with it are imported.
    pub label_studio_key: Option<LabelStudioSigningKey>,
    pub report: Report,
}

impl Plan {
    /// Rows the import writes, for the progress bar.
    pub fn rows(&self) -> usize {
        self.organizations.len()
            + self.users.len()
            + self.tokens.len()
            + self.memberships.len()
            + self.token_settings.len()
            + self.personal_tokens.len()
    }
}

/// The values whose presence in the target the plan depends on.
pub fn lookup(data: &LabelStudioData) -> Lookup {
    Lookup {
        emails: data
            .users
            .iter()
            .filter_map(|user| Email::parse(&user.email).ok())
            .map(|email| email.as_str().to_owned())
            .collect(),
        token_hashes: data
            .tokens
            .iter()
            .map(|token| TokenHash::of(token.key.expose_secret()).as_str().to_owned())
            .collect(),
        invite_tokens: data
            .organizations
            .iter()
            .filter_map(|org| org.invite_token.as_ref())
            .map(|token| token.expose_secret().to_owned())
            .collect(),
        jtis: data
            .personal_tokens
            .iter()
            .map(|pat| pat.jti.clone())
            .collect(),
    }
}

/// Whether a Label Studio row is written by this run, was imported before, or stays behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    New,
    Known,
    Left,
}

pub fn plan(data: &LabelStudioData, existing: &Existing) -> Plan {
    let mut plan = Plan {
        organizations: Vec::new(),
        users: Vec::new(),
        owners: Vec::new(),
        tokens: Vec::new(),
        memberships: Vec::new(),
        known_users: HashMap::new(),
        known_organizations: HashMap::new(),
        token_settings: Vec::new(),
        personal_tokens: Vec::new(),
        label_studio_key: None,
        report: Report::default(),
    };
    let organizations = plan_organizations(data, existing, &mut plan);
    let users = plan_users(data, existing, &mut plan);
    plan_memberships(data, existing, &organizations, &users, &mut plan);
    choose_active_organizations(data, &mut plan);
    plan_owners(data, &organizations, &users, &mut plan);
    plan_tokens(data, existing, &users, &mut plan);
    personal_tokens::plan_token_settings(data, &organizations, &mut plan);
    personal_tokens::plan_personal_tokens(data, existing, &users, &mut plan);
    plan
}

fn plan_organizations(
    data: &LabelStudioData,
    existing: &Existing,
    plan: &mut Plan,
) -> HashMap<i64, Fate> {
    let mut fates = HashMap::new();
    let mut taken: HashSet<&str> = existing.invite_tokens.iter().map(String::as_str).collect();
    for org in &data.organizations {
        let key = LabelStudioKey {
            id: org.id,
            created_at: org.created_at,
        };
        let shown = format!("organization {} {:?}", org.id, org.title);
        if let Some(&id) = existing.organizations.get(&key) {
            plan.known_organizations.insert(org.id, id);
            plan.report
                .skipped(Kind::Organizations, "imported by an earlier run");
            plan.report.skipped(
                Kind::InviteLinks,
                "their organization was imported by an earlier run; the link here stays as it is",
            );
            fates.insert(org.id, Fate::Known);
            continue;
        }
        let current = org.invite_token.as_ref().map(|t| t.expose_secret());
        let invite_token = match current.map(|token| (token, InviteToken::parse(token))) {
            Some((token, Ok(parsed))) if !taken.contains(token) => {
                plan.report.imported(Kind::InviteLinks);
                parsed
            }
            Some((_, Ok(_))) => {
                plan.report.conflict(
                    Kind::InviteLinks,
                    format!(
                        "{shown}: its invite token is already another organization's here; \
                         it gets a new invite link"
                    ),
                );
                InviteToken::generate()
            }
            _ => {
                plan.report.skipped(
                    Kind::InviteLinks,
                    "Label Studio has none, or not letters and digits; a new one is made",
                );
                InviteToken::generate()
            }
        };
        if let Some(token) = current {
            taken.insert(token);
        }
        plan.report.imported(Kind::Organizations);
        plan.organizations.push(ImportedOrganization {
            key,
            title: org.title.clone(),
            invite_token,
        });
        fates.insert(org.id, Fate::New);
    }
    fates
}

fn plan_users(data: &LabelStudioData, existing: &Existing, plan: &mut Plan) -> HashMap<i64, Fate> {
    let mut fates = HashMap::new();
    // Label Studio's email column is unique only as written; here it is unique in any case.
    let mut spellings: HashMap<String, Vec<&SourceUser>> = HashMap::new();
    for user in &data.users {
        if let Ok(email) = Email::parse(&user.email) {
            spellings
                .entry(email.as_str().to_owned())
                .or_default()
                .push(user);
        }
    }
    for user in &data.users {
        let key = LabelStudioKey {
            id: user.id,
            created_at: user.date_joined,
        };
        if let Some(&id) = existing.users.get(&key) {
            plan.known_users.insert(user.id, id);
            plan.report
                .skipped(Kind::Users, "imported by an earlier run");
            fates.insert(user.id, Fate::Known);
            continue;
        }
        fates.insert(user.id, Fate::Left);
        let shown = format!("user {} <{}>", user.id, user.email.escape_debug());
        let email = match Email::parse(&user.email) {
            Ok(email) => email,
            Err(error) => {
                plan.report
                    .conflict(Kind::Users, format!("{shown}: {error}"));
                continue;
            }
        };
        let others: Vec<String> = spellings
            .get(email.as_str())
            .into_iter()
            .flatten()
            .filter(|other| other.id != user.id)
            .map(|other| format!("user {} <{}>", other.id, other.email))
            .collect();
        if !others.is_empty() {
            plan.report.conflict(
                Kind::Users,
                format!(
                    "{shown}: the email differs only in case from {}",
                    others.join(", ")
                ),
            );
            continue;
        }
        if existing.emails.contains(email.as_str()) {
            plan.report.conflict(
                Kind::Users,
                format!(
                    "{shown}: an account here already has the email {email}",
                    email = email.as_str()
                ),
            );
            continue;
        }
        let username = match Username::parse_or_default(&user.username, &email) {
            Ok(username) => username,
            Err(_) => {
                plan.report.note(
                    "usernames that were not valid here, replaced by the email's local part",
                    shown.clone(),
                );
                Username::parse_or_default("", &email).unwrap_or_else(|_| {
                    unreachable!("a valid email's local part is a valid username")
                })
            }
        };
        let password_hash = match django::classify(user.password.expose_secret()) {
            Stored::Supported(_) => Some(user.password.expose_secret().to_owned()),
            Stored::Unusable => {
                plan.report.note(
                    "users without a usable password in Label Studio (they log in after \
                     `reset-password`, or with their API token)",
                    shown.clone(),
                );
                None
            }
            Stored::TooCostly(algorithm) => {
                plan.report.note(
                    "users whose password hash costs more than a login may spend (they log in \
                     after `reset-password`)",
                    format!("{shown}: {}", algorithm.name()),
                );
                None
            }
            Stored::Unsupported(name) => {
                plan.report.note(
                    "users whose password hash this service can't verify (they log in after \
                     `reset-password`)",
                    format!("{shown}: {name}"),
                );
                None
            }
        };
        if !user.is_active {
            plan.report.note(
                "users inactive in Label Studio, imported inactive",
                shown.clone(),
            );
        }
        plan.report.imported(Kind::Users);
        plan.users.push(PlannedUser {
            key,
            username,
            first_name: person_name(&user.first_name),
            last_name: person_name(&user.last_name),
            email,
            password_hash,
            is_active: user.is_active,
            active_organization: None,
        });
        fates.insert(user.id, Fate::New);
    }
    fates
}

/// A name as Label Studio holds it, made acceptable here: control characters dropped and cut
/// to the length both allow.
fn person_name(name: &str) -> PersonName {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    PersonName::parse(&cleaned, "name").unwrap_or_else(|_| {
        unreachable!("a name without control characters, cut to length, is valid")
    })
}

/// One (organization, user) pair, merged over Label Studio's rows for it: its membership table
/// has no unique constraint.
struct Merged {
    live_since: Option<DateTime<Utc>>,
    first_joined: DateTime<Utc>,
    last_deleted: Option<DateTime<Utc>>,
    rows: usize,
}

fn plan_memberships(
    data: &LabelStudioData,
    existing: &Existing,
    organizations: &HashMap<i64, Fate>,
    users: &HashMap<i64, Fate>,
    plan: &mut Plan,
) {
    let mut merged: BTreeMap<(i64, i64), Merged> = BTreeMap::new();
    for row in &data.memberships {
        let entry = merged
            .entry((row.organization_id, row.user_id))
            .or_insert(Merged {
                live_since: None,
                first_joined: row.created_at,
                last_deleted: None,
                rows: 0,
            });
        entry.rows += 1;
        entry.first_joined = entry.first_joined.min(row.created_at);
        match row.deleted_at {
            None => {
                entry.live_since = Some(
                    entry
                        .live_since
                        .map_or(row.created_at, |since| since.min(row.created_at)),
                );
            }
            Some(deleted) => {
                entry.last_deleted = Some(entry.last_deleted.map_or(deleted, |d| d.max(deleted)));
            }
        }
    }
    for ((organization, user), pair) in merged {
        if pair.rows > 1 {
            plan.report.note(
                "memberships Label Studio holds more than once, merged into one",
                format!(
                    "user {user} in organization {organization}: {} rows",
                    pair.rows
                ),
            );
        }
        let org_fate = organizations
            .get(&organization)
            .copied()
            .unwrap_or(Fate::Left);
        let user_fate = users.get(&user).copied().unwrap_or(Fate::Left);
        match (org_fate, user_fate) {
            (_, Fate::Left) => {
                plan.report
                    .skipped(Kind::Memberships, "their user was not imported");
                continue;
            }
            (Fate::Left, _) => {
                plan.report.skipped(
                    Kind::Memberships,
                    "their organization is not in Label Studio",
                );
                continue;
            }
            (Fate::Known, Fate::Known) => {
                let here = (
                    plan.known_organizations[&organization],
                    plan.known_users[&user],
                );
                if existing.memberships.contains(&here) {
                    plan.report
                        .skipped(Kind::Memberships, "imported by an earlier run");
                    continue;
                }
            }
            _ => {}
        }
        let deleted_at = match pair.live_since {
            Some(_) => None,
            None => pair.last_deleted,
        };
        if deleted_at.is_some() {
            plan.report.note(
                "memberships removed in Label Studio, imported as removed (not a member here)",
                format!("user {user} in organization {organization}"),
            );
        }
        plan.report.imported(Kind::Memberships);
        plan.memberships.push(PlannedMembership {
            organization,
            user,
            joined_at: pair.live_since.unwrap_or(pair.first_joined),
            deleted_at,
        });
    }
}

/// The organization a new user acts in: Label Studio's choice while the user is still a member
/// there, or else the organization the user joined first and still belongs to. Label Studio
/// itself makes that second choice at the next login; a removed member acts in none.
fn choose_active_organizations(data: &LabelStudioData, plan: &mut Plan) {
    let mut live: HashMap<i64, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    for membership in plan.memberships.iter().filter(|m| m.deleted_at.is_none()) {
        live.entry(membership.user)
            .or_default()
            .push((membership.joined_at, membership.organization));
    }
    let chosen: HashMap<i64, Option<i64>> = data
        .users
        .iter()
        .map(|user| {
            let mut orgs = live.get(&user.id).cloned().unwrap_or_default();
            orgs.sort();
            let active = match user.active_organization_id {
                Some(id) if orgs.iter().any(|(_, org)| *org == id) => Some(id),
                _ => orgs.first().map(|(_, org)| *org),
            };
            (user.id, active)
        })
        .collect();
    for user in &mut plan.users {
        user.active_organization = chosen.get(&user.key.id).copied().flatten();
        if user.active_organization.is_none() {
            plan.report.note(
                "users who are a member of no organization (they log in but act in none)",
                format!("user {} <{}>", user.key.id, user.email.as_str()),
            );
        }
    }
}

fn plan_owners(
    data: &LabelStudioData,
    organizations: &HashMap<i64, Fate>,
    users: &HashMap<i64, Fate>,
    plan: &mut Plan,
) {
    for org in &data.organizations {
        if organizations.get(&org.id) != Some(&Fate::New) {
            continue;
        }
        let Some(owner) = org.created_by_id else {
            continue;
        };
        match users.get(&owner) {
            Some(Fate::New | Fate::Known) => plan.owners.push((org.id, owner)),
            _ => plan.report.note(
                "organizations whose owner was not imported (they have no owner here)",
                format!(
                    "organization {} {:?}: owner user {owner}",
                    org.id, org.title
                ),
            ),
        }
    }
}

fn plan_tokens(
    data: &LabelStudioData,
    existing: &Existing,
    users: &HashMap<i64, Fate>,
    plan: &mut Plan,
) {
    let active: HashMap<i64, Option<i64>> = data
        .users
        .iter()
        .map(|user| (user.id, user.active_organization_id))
        .collect();
    let mut with_token = HashSet::new();
    for token in &data.tokens {
        match users.get(&token.user_id).copied().unwrap_or(Fate::Left) {
            Fate::Left => {
                plan.report
                    .skipped(Kind::ApiTokens, "their user was not imported");
                continue;
            }
            Fate::Known => {
                plan.report.skipped(
                    Kind::ApiTokens,
                    "their user was imported by an earlier run; the token here stays as it is",
                );
                continue;
            }
            Fate::New => {}
        }
        let key = token.key.expose_secret();
        let shown = format!("user {}", token.user_id);
        if let Some(Some(org)) = active.get(&token.user_id)
            && data.legacy_tokens_disabled(*org)
        {
            plan.report.note(
                "API tokens imported switched off, as their organization has legacy tokens off \
                 in Label Studio",
                shown.clone(),
            );
        }
        if key.is_empty() || key.len() > MAX_TOKEN_BYTES {
            plan.report
                .skipped(Kind::ApiTokens, "empty or too long to be sent");
            continue;
        }
        let hash = TokenHash::of(key);
        if existing.token_hashes.contains(hash.as_str()) {
            plan.report.conflict(
                Kind::ApiTokens,
                format!("{shown}: the API token is already another account's here; the user gets a new one"),
            );
            continue;
        }
        plan.report.imported(Kind::ApiTokens);
        with_token.insert(token.user_id);
        plan.tokens.push(PlannedToken::Kept {
            user: token.user_id,
            token: hash,
            created_at: token.created,
        });
    }
    for user in &plan.users {
        if !with_token.contains(&user.key.id) {
            plan.report.note(
                "users whose API token did not come along (they get a new one; `ResetApiToken` \
                 shows a fresh one after a login)",
                format!("user {} <{}>", user.key.id, user.email.as_str()),
            );
            plan.tokens
                .push(PlannedToken::Generated { user: user.key.id });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use secrecy::SecretString;

    use super::*;
    use crate::import::{
        report::Counts,
        source::{SourceMembership, SourceOrganization, SourceToken},
    };

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 2, 41, second).unwrap()
    }

    const HASH: &str =
        "pbkdf2_sha256$1000000$l3xC87eJf4S82Dtb7B0uaX$+B4yVa4IKMNwcbBc4V6IF5hutexR4ndADb6UpaBGlcA=";

    fn user(id: i64, email: &str) -> SourceUser {
        SourceUser {
            id,
            email: email.into(),
            username: String::new(),
            first_name: String::new(),
            last_name: String::new(),
            password: SecretString::from(HASH),
            is_active: true,
            date_joined: at(id as u32),
            active_organization_id: Some(1),
        }
    }

    fn token(user_id: i64, key: &str) -> SourceToken {
        SourceToken {
            key: SecretString::from(key),
            user_id,
            created: at(30),
        }
    }

    fn member(user_id: i64, organization_id: i64, deleted: bool) -> SourceMembership {
        SourceMembership {
            user_id,
            organization_id,
            created_at: at(40 + user_id as u32),
            deleted_at: deleted.then(|| at(50)),
        }
    }

    fn organization(id: i64, owner: Option<i64>, token: &str) -> SourceOrganization {
        SourceOrganization {
            id,
            title: format!("Org {id}"),
            created_at: at(10 + id as u32),
            created_by_id: owner,
            invite_token: Some(SecretString::from(token)),
        }
    }

    /// A small Label Studio like the fixture: an owner, members, a removed member, a user
    /// without a password, and a second organization nobody belongs to.
    fn label_studio() -> LabelStudioData {
        let mut nopassword = user(3, "nopassword@example.com");
        nopassword.password = SecretString::from("");
        nopassword.active_organization_id = None;
        LabelStudioData {
            users: vec![
                user(1, "Admin@example.com"),
                user(2, "bob@example.com"),
                nopassword,
                user(4, "leaver@example.com"),
            ],
            tokens: vec![
                token(1, "admintoken12345"),
                token(2, "b0b"),
                token(3, "n0p"),
                token(4, "l34v3r"),
            ],
            organizations: vec![
                organization(1, Some(1), "CurrentInvite1"),
                organization(2, None, "SecondOrgInvite"),
            ],
            memberships: vec![
                member(1, 1, false),
                member(2, 1, false),
                member(3, 1, false),
                member(4, 1, true),
            ],
            ..LabelStudioData::default()
        }
    }

    fn counts(imported: usize, skipped: usize, conflicts: usize) -> Counts {
        Counts {
            imported,
            skipped,
            conflicts,
        }
    }

    #[test]
    fn a_first_run_imports_everything() {
        let plan = plan(&label_studio(), &Existing::default());
        assert_eq!(plan.report.counts(Kind::Organizations), counts(2, 0, 0));
        assert_eq!(plan.report.counts(Kind::Users), counts(4, 0, 0));
        assert_eq!(plan.report.counts(Kind::ApiTokens), counts(4, 0, 0));
        assert_eq!(plan.report.counts(Kind::Memberships), counts(4, 0, 0));
        assert_eq!(plan.report.counts(Kind::InviteLinks), counts(2, 0, 0));
        assert_eq!(
            plan.organizations[0].invite_token.as_str(),
            "CurrentInvite1"
        );
        assert_eq!(plan.owners, vec![(1, 1)]);

        let admin = &plan.users[0];
        assert_eq!(admin.email.as_str(), "admin@example.com");
        assert_eq!(admin.username.as_str(), "admin");
        assert_eq!(admin.password_hash.as_deref(), Some(HASH));
        // The user without a password can't log in with one.
        assert_eq!(plan.users[2].password_hash, None);
    }

    #[test]
    fn a_removed_member_is_imported_as_removed_and_acts_in_no_organization() {
        let plan = plan(&label_studio(), &Existing::default());
        let leaver = plan.memberships.iter().find(|m| m.user == 4).unwrap();
        assert_eq!(leaver.deleted_at, Some(at(50)));
        assert_eq!(plan.users[3].active_organization, None);
        // Label Studio left the passwordless user without an active organization, yet a member.
        assert_eq!(plan.users[2].active_organization, Some(1));
        assert_eq!(plan.users[0].active_organization, Some(1));
    }

    #[test]
    fn emails_differing_only_in_case_are_conflicts_and_neither_is_imported() {
        let mut data = label_studio();
        data.users.push(user(5, "ADMIN@example.com"));
        data.tokens.push(token(5, "other-admin-token"));
        data.memberships.push(member(5, 1, false));
        let plan = plan(&data, &Existing::default());
        assert_eq!(plan.report.counts(Kind::Users), counts(3, 0, 2));
        assert!(
            plan.users
                .iter()
                .all(|u| u.email.as_str() != "admin@example.com")
        );
        assert_eq!(plan.report.counts(Kind::ApiTokens), counts(3, 2, 0));
        assert_eq!(plan.report.counts(Kind::Memberships), counts(3, 2, 0));
        // The organization is imported without its owner.
        assert!(plan.owners.is_empty());
        assert!(plan.report.conflicts()[0].contains("differs only in case"));
    }

    #[test]
    fn an_email_taken_here_is_a_conflict() {
        let existing = Existing {
            emails: HashSet::from(["bob@example.com".to_owned()]),
            ..Existing::default()
        };
        let plan = plan(&label_studio(), &existing);
        assert_eq!(plan.report.counts(Kind::Users), counts(3, 0, 1));
        assert!(plan.report.conflicts()[0].contains("already has the email"));
    }

    #[test]
    fn a_second_run_writes_nothing() {
        let data = label_studio();
        let first = plan(&data, &Existing::default());
        // What the first run left behind, as the target reports it.
        let mut existing = Existing::default();
        for (index, user) in first.users.iter().enumerate() {
            existing.users.insert(user.key, 100 + index as i64);
            existing.emails.insert(user.email.as_str().to_owned());
        }
        for (index, org) in first.organizations.iter().enumerate() {
            existing.organizations.insert(org.key, 10 + index as i64);
        }
        for membership in &first.memberships {
            existing
                .memberships
                .insert((10 + membership.organization - 1, 100 + membership.user - 1));
        }
        existing.token_hashes = lookup(&data).token_hashes.into_iter().collect();
        existing.invite_tokens = lookup(&data).invite_tokens.into_iter().collect();

        let second = plan(&data, &existing);
        assert_eq!(second.rows(), 0);
        assert!(!second.report.writes_anything());
        assert_eq!(second.report.counts(Kind::Users), counts(0, 4, 0));
        assert_eq!(second.report.counts(Kind::ApiTokens), counts(0, 4, 0));
        assert_eq!(second.report.counts(Kind::Memberships), counts(0, 4, 0));
        assert_eq!(second.report.counts(Kind::Organizations), counts(0, 2, 0));
        assert_eq!(second.report.counts(Kind::InviteLinks), counts(0, 2, 0));
    }

    #[test]
    fn a_later_run_brings_only_what_is_new() {
        let mut data = label_studio();
        let first = plan(&data, &Existing::default());
        let mut existing = Existing::default();
        for (index, user) in first.users.iter().enumerate() {
            existing.users.insert(user.key, 100 + index as i64);
        }
        for (index, org) in first.organizations.iter().enumerate() {
            existing.organizations.insert(org.key, 10 + index as i64);
        }
        for membership in &first.memberships {
            existing
                .memberships
                .insert((10 + membership.organization - 1, 100 + membership.user - 1));
        }
        // Since then, a newcomer signed up and bob joined the second organization.
        data.users.push(user(6, "newcomer@example.com"));
        data.tokens.push(token(6, "newcomer-token"));
        data.memberships.push(member(6, 1, false));
        data.memberships.push(member(2, 2, false));

        let later = plan(&data, &existing);
        assert_eq!(later.report.counts(Kind::Users), counts(1, 4, 0));
        assert_eq!(later.report.counts(Kind::Memberships), counts(2, 4, 0));
        assert_eq!(later.report.counts(Kind::ApiTokens), counts(1, 4, 0));
        assert_eq!(later.users[0].active_organization, Some(1));
    }

    #[test]
    fn a_token_taken_here_is_a_conflict_and_the_user_gets_a_new_one() {
        let existing = Existing {
            token_hashes: HashSet::from([TokenHash::of("admintoken12345").as_str().to_owned()]),
            ..Existing::default()
        };
        let plan = plan(&label_studio(), &existing);
        assert_eq!(plan.report.counts(Kind::ApiTokens), counts(3, 0, 1));
        assert!(
            plan.tokens
                .iter()
                .any(|t| matches!(t, PlannedToken::Generated { user: 1 }))
        );
    }

    #[test]
    fn tokens_label_studio_refuses_come_along_switched_off() {
        let mut data = label_studio();
        data.jwt_settings
            .push(crate::import::source::SourceJwtSettings {
                organization_id: 1,
                api_tokens_enabled: true,
                legacy_api_tokens_enabled: false,
                api_token_ttl_days: 73_000,
            });
        let plan = plan(&data, &Existing::default());
        assert_eq!(plan.report.counts(Kind::ApiTokens), counts(4, 0, 0));
        assert_eq!(plan.token_settings.len(), 1);
        assert!(!plan.token_settings[0].1.legacy_api_tokens_enabled);
        assert!(plan.report.to_string().contains("switched off"));
    }

    #[test]
    fn an_invite_token_taken_here_or_missing_is_replaced() {
        let mut data = label_studio();
        data.organizations[1].invite_token = None;
        let existing = Existing {
            invite_tokens: HashSet::from(["CurrentInvite1".to_owned()]),
            ..Existing::default()
        };
        let plan = plan(&data, &existing);
        assert_eq!(plan.report.counts(Kind::InviteLinks), counts(0, 1, 1));
        assert_eq!(plan.report.counts(Kind::Organizations), counts(2, 0, 0));
        assert_ne!(
            plan.organizations[0].invite_token.as_str(),
            "CurrentInvite1"
        );
    }

    #[test]
    fn hashes_that_cannot_be_verified_import_without_a_password() {
        let mut data = label_studio();
        data.users[0].password = SecretString::from("!unusable");
        data.users[1].password = SecretString::from("md5$salt$0123456789abcdef");
        data.users[3].password = SecretString::from(
            "pbkdf2_sha256$900000000$salt$xC67BvutkXG0wkJIQEhpHacLNznCP8ZSImmAb4CnkIA=",
        );
        let plan = plan(&data, &Existing::default());
        assert!(plan.users.iter().all(|u| u.password_hash.is_none()));
        let report = plan.report.to_string();
        assert!(report.contains("md5"), "{report}");
        assert!(report.contains("costs more"), "{report}");
        assert!(!report.contains("salt"), "{report}");
    }

    #[test]
    fn invalid_emails_are_conflicts_and_odd_names_are_cleaned() {
        let mut data = label_studio();
        data.users[1].email = "not an email".into();
        data.users[2].first_name = "Ann\u{7}".into();
        data.users[2].username = "x".repeat(300);
        let plan = plan(&data, &Existing::default());
        assert_eq!(plan.report.counts(Kind::Users), counts(3, 0, 1));
        let nopassword = plan.users.iter().find(|u| u.key.id == 3).unwrap();
        assert_eq!(nopassword.first_name.as_str(), "Ann");
        assert_eq!(nopassword.username.as_str(), "nopassword");
    }

    #[test]
    fn repeated_membership_rows_merge_and_a_live_one_wins() {
        let mut data = label_studio();
        data.memberships.push(member(4, 1, false));
        let plan = plan(&data, &Existing::default());
        assert_eq!(plan.report.counts(Kind::Memberships), counts(4, 0, 0));
        let leaver = plan.memberships.iter().find(|m| m.user == 4).unwrap();
        assert_eq!(leaver.deleted_at, None);
    }

    #[test]
    fn the_report_shows_no_secret() {
        let plan = plan(&label_studio(), &Existing::default());
        let report = plan.report.to_string();
        for secret in ["admintoken12345", "CurrentInvite1", "pbkdf2", "l34v3r"] {
            assert!(!report.contains(secret), "{report}");
        }
    }
}
