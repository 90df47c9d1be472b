//! What an import did, or would do: counts of imported, skipped and conflicting rows, the
//! reasons rows were skipped, a line per conflict and notes an operator should read. It never
//! holds a password, a hash or a token.

use std::{collections::BTreeMap, fmt};

/// Imported, skipped and conflicting rows of one kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub imported: usize,
    pub skipped: usize,
    pub conflicts: usize,
}

/// The kinds of rows an import carries over, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Organizations,
    Users,
    ApiTokens,
    PersonalTokens,
    Memberships,
    InviteLinks,
    TokenSettings,
}

impl Kind {
    pub const ALL: [Self; 7] = [
        Self::Organizations,
        Self::Users,
        Self::ApiTokens,
        Self::PersonalTokens,
        Self::Memberships,
        Self::InviteLinks,
        Self::TokenSettings,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Organizations => "organizations",
            Self::Users => "users",
            Self::ApiTokens => "api tokens",
            Self::Memberships => "memberships",
            Self::InviteLinks => "invite links",
            Self::PersonalTokens => "PATs",
            Self::TokenSettings => "token settings",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The source, without credentials.
    pub source: String,
    pub dry_run: bool,
    counts: BTreeMap<Kind, Counts>,
    /// How many rows of each kind were skipped, by reason.
    skipped: BTreeMap<(Kind, &'static str), usize>,
    conflicts: Vec<String>,
    notes: BTreeMap<&'static str, Vec<String>>,
}

impl Report {
    pub fn counts(&self, kind: Kind) -> Counts {
        self.counts.get(&kind).copied().unwrap_or_default()
    }

    pub fn conflicts(&self) -> &[String] {
        &self.conflicts
    }

    /// Whether anything would be, or was, written.
    pub fn writes_anything(&self) -> bool {
        self.counts.values().any(|counts| counts.imported > 0)
    }

    pub(crate) fn imported(&mut self, kind: Kind) {
        self.counts.entry(kind).or_default().imported += 1;
    }

    pub(crate) fn skipped(&mut self, kind: Kind, reason: &'static str) {
        self.counts.entry(kind).or_default().skipped += 1;
        *self.skipped.entry((kind, reason)).or_default() += 1;
    }

    pub(crate) fn conflict(&mut self, kind: Kind, line: String) {
        self.counts.entry(kind).or_default().conflicts += 1;
        self.conflicts.push(line);
    }

    /// Something the operator should know about an imported row, grouped under `topic`.
    pub(crate) fn note(&mut self, topic: &'static str, item: String) {
        self.notes.entry(topic).or_default().push(item);
    }
}

/// Lists at most this many items under a note; the rest are counted.
const MAX_NOTE_ITEMS: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(
                f,
                "Label Studio import from {} (dry run: nothing was written)",
                self.source
            )?;
        } else {
            writeln!(f, "Label Studio import from {}", self.source)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<14} {:>10} {:>10} {:>10}",
            "", "imported", "skipped", "conflicts"
        )?;
        for kind in Kind::ALL {
            let counts = self.counts(kind);
            writeln!(
                f,
                "{:<14} {:>10} {:>10} {:>10}",
                kind.label(),
                counts.imported,
                counts.skipped,
                counts.conflicts
            )?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "\nskipped:")?;
            for ((kind, reason), count) in &self.skipped {
                writeln!(f, "  {count} {}: {reason}", kind.label())?;
            }
        }
        if !self.conflicts.is_empty() {
            writeln!(
                f,
                "\nconflicts (not imported; resolve them and run the import again):"
            )?;
            for line in &self.conflicts {
                writeln!(f, "  {line}")?;
            }
        }
        for (topic, items) in &self.notes {
            writeln!(f, "\n{topic} ({}):", items.len())?;
            for item in items.iter().take(MAX_NOTE_ITEMS) {
                writeln!(f, "  {item}")?;
            }
            if items.len() > MAX_NOTE_ITEMS {
                writeln!(f, "  … and {} more", items.len() - MAX_NOTE_ITEMS)?;
            }
        }
        Ok(())
    }
}
