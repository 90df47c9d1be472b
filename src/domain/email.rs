//! Email addresses: checked syntax, at most 255 characters, lowercased as a whole.

use super::{ParseError, has_control};

/// A syntactically valid email address, lowercased as a whole so that lookups and uniqueness
/// are case-insensitive on every path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Longest accepted address, in characters ("under 256").
pub const MAX_EMAIL_CHARS: usize = 255;

impl Email {
    /// Parses an address the way Django's `EmailValidator` does for dot-atom local parts and
    /// ASCII domains; surrounding spaces are trimmed as a form field would.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let invalid = |why: &str| {
            ParseError::new(
                "EMAIL_INVALID",
                format!("email is not a valid address: {why}"),
            )
        };
        let text = input.trim_matches(' ');
        if text.is_empty() {
            return Err(ParseError::new("EMAIL_REQUIRED", "email is required"));
        }
        if text.chars().count() > MAX_EMAIL_CHARS {
            return Err(ParseError::new(
                "EMAIL_TOO_LONG",
                format!("email must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        if has_control(text) {
            return Err(invalid("it contains control characters"));
        }
        if !text.is_ascii() {
            return Err(invalid("only ASCII addresses are accepted"));
        }
        let (local, domain) = text
            .rsplit_once('@')
            .ok_or_else(|| invalid("it has no '@'"))?;
        if !valid_local_part(local) {
            return Err(invalid("the part before '@' is malformed"));
        }
        if !valid_domain(domain) {
            return Err(invalid("the domain is malformed"));
        }
        Ok(Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`, Label Studio's default username.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(local, _)| local)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn valid_local_part(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{}|~-";
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c))
        })
}

fn valid_domain(domain: &str) -> bool {
    if domain.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let Some((tld, rest)) = labels.split_last() else {
        return false;
    };
    let label_ok = |label: &str, max: usize| {
        (1..=max).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !rest.is_empty()
        && rest.iter().all(|label| label_ok(label, 63))
        && tld.len() >= 2
        && label_ok(tld, 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lowercased_as_a_whole() {
        let email = Email::parse("Mixed.Case@Example.COM").unwrap();
        assert_eq!(email.as_str(), "mixed.case@example.com");
        assert_eq!(email.local_part(), "mixed.case");
    }

    #[test]
    fn ordinary_addresses_are_accepted() {
        for ok in [
            "a@b.co",
            "ann+label@example.org",
            "o'brien@mail.example.ie",
            "x@localhost",
            "first.last@sub-domain.example.com",
            " padded@example.com ",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@b.c",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a@-example.com",
            "a@example-.com",
            "a b@example.com",
            "a@exa mple.com",
            "a\0@example.com",
            "a@example.com\n",
            "ünï@example.com",
            "a@b@example.com",
            "' OR 1=1 --@x",
        ] {
            assert_eq!(
                Email::parse(bad).map_err(|e| e.reason),
                Err("EMAIL_INVALID"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_and_overlong_addresses_have_their_own_reasons() {
        assert_eq!(Email::parse("").unwrap_err().reason, "EMAIL_REQUIRED");
        // Labels over 63 characters are malformed, so build the domain from short labels.
        let labels = vec!["c".repeat(60); 4].join(".");
        let at_limit = format!(
            "{}@{labels}.com",
            "a".repeat(MAX_EMAIL_CHARS - labels.len() - 5)
        );
        assert_eq!(at_limit.len(), MAX_EMAIL_CHARS);
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("a{at_limit}");
        assert_eq!(Email::parse(&over).unwrap_err().reason, "EMAIL_TOO_LONG");
    }
}
