//! Usernames and personal names: bounded length, no control characters.

use super::{Email, ParseError, has_control};

/// Longest username and first/last name Label Studio stores.
pub const MAX_NAME_CHARS: usize = 256;

fn parse_name(input: &str, field: &str, reason: &'static str) -> Result<String, ParseError> {
    if input.chars().take(MAX_NAME_CHARS + 1).count() > MAX_NAME_CHARS {
        return Err(ParseError::new(
            reason,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if has_control(input) {
        return Err(ParseError::new(
            reason,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(input.trim().to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Parses an optional username; an empty one becomes the part of the email before `@`,
    /// as Label Studio does.
    pub fn parse_or_default(input: &str, email: &Email) -> Result<Self, ParseError> {
        let name = parse_name(input, "username", "USERNAME_INVALID")?;
        if name.is_empty() {
            return Ok(Self(email.local_part().to_owned()));
        }
        Ok(Self(name))
    }

    /// Parses a username that must be given (a profile change naming it).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let name = parse_name(input, "username", "USERNAME_INVALID")?;
        if name.is_empty() {
            return Err(ParseError::new(
                "USERNAME_INVALID",
                "username must not be empty",
            ));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first or last name; may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(input: &str, field: &str) -> Result<Self, ParseError> {
        parse_name(input, field, "NAME_INVALID").map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_username_defaults_to_the_local_part() {
        let email = Email::parse("Ann+Label@Example.org").unwrap();
        assert_eq!(
            Username::parse_or_default("", &email).unwrap().as_str(),
            "ann+label"
        );
        assert_eq!(
            Username::parse_or_default("annie", &email)
                .unwrap()
                .as_str(),
            "annie"
        );
    }

    #[test]
    fn names_refuse_control_characters_and_excess_length() {
        assert!(PersonName::parse("Zoë", "first_name").is_ok());
        assert!(PersonName::parse("a\u{7}b", "first_name").is_err());
        assert!(PersonName::parse(&"n".repeat(257), "last_name").is_err());
        assert!(PersonName::parse(&"n".repeat(256), "last_name").is_ok());
    }
}
