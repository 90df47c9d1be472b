//! Passwords: 8 to 128 characters (characters, not bytes), held as a secret.

use secrecy::{ExposeSecret, SecretString};

use super::ParseError;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest password a login checks.
pub const MAX_LOGIN_PASSWORD_CHARS: usize = 4096;

/// A password of acceptable length. It never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct Password(SecretString);

impl Password {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        // Count at most one past the limit so a huge input costs no more than a short one.
        let chars = input.chars().take(MAX_PASSWORD_CHARS + 1).count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ParseError::new(
                "PASSWORD_LENGTH",
                format!(
                    "password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"
                ),
            ));
        }
        Ok(Self(SecretString::from(input)))
    }

    /// A password typed at login: checked against the stored hash whatever its length, since
    /// Label Studio's CLI and its `reset_password` set passwords of any length. Only the empty
    /// one and one longer than any hash input worth computing are refused.
    pub fn for_login(input: &str) -> Result<Self, ParseError> {
        let chars = input.chars().take(MAX_LOGIN_PASSWORD_CHARS + 1).count();
        if !(1..=MAX_LOGIN_PASSWORD_CHARS).contains(&chars) {
            return Err(ParseError::new(
                "PASSWORD_LENGTH",
                format!("password must be 1 to {MAX_LOGIN_PASSWORD_CHARS} characters long"),
            ));
        }
        Ok(Self(SecretString::from(input)))
    }

    /// Whether the password would be accepted if it were being set now.
    pub fn meets_policy(&self) -> bool {
        Self::parse(self.expose()).is_ok()
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(**redacted**)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bounds_are_counted_in_characters() {
        assert!(Password::parse(&"x".repeat(7)).is_err());
        assert!(Password::parse(&"x".repeat(8)).is_ok());
        assert!(Password::parse(&"x".repeat(128)).is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        // 128 four-byte characters are 512 bytes and still a valid password.
        assert!(Password::parse(&"🔑".repeat(128)).is_ok());
        assert!(Password::parse(&"🔑".repeat(7)).is_err());
    }

    #[test]
    fn a_login_takes_any_length_the_policy_would_refuse() {
        let short = Password::for_login("abc").unwrap();
        assert!(!short.meets_policy());
        assert!(Password::for_login("correct horse").unwrap().meets_policy());
        assert!(Password::for_login("").is_err());
        assert!(Password::for_login(&"x".repeat(MAX_LOGIN_PASSWORD_CHARS + 1)).is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let password = Password::parse("correct horse").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
