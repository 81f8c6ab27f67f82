//! Validated user input. Each type's `parse` is the only way to build it, and its error says
//! exactly what rule was broken, in words fit for an API response.

use twtr_common::text::{self, TextKind};
use unicode_normalization::UnicodeNormalization as _;

/// 3 to 15 characters of `A-Za-z0-9_`. Unique ignoring case; the original case is kept for
/// display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 15;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let len = raw.chars().count();
        if !(Self::MIN..=Self::MAX).contains(&len) {
            return Err(InvalidInput::new(format!(
                "username must be {} to {} characters long",
                Self::MIN,
                Self::MAX
            )));
        }
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(InvalidInput::new(
                "username may contain only letters A-Z, digits and underscores",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key uniqueness is checked on.
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// 8 to 128 characters. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN: usize = 8;
    pub const MAX: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let len = raw.chars().count();
        if !(Self::MIN..=Self::MAX).contains(&len) {
            return Err(InvalidInput::new(format!(
                "password must be {} to {} characters long",
                Self::MIN,
                Self::MAX
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Free text shown in a profile: NFC-normalized, trimmed, at most `max` characters, and within
/// the text policy for profiles (no control, bidirectional-override or zero-width characters,
/// checked before trimming so none hides at an end).
fn profile_text(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidInput> {
    text::check(field, raw, TextKind::Profile).map_err(|v| InvalidInput::new(v.to_string()))?;
    let text: String = raw.trim().nfc().collect();
    if text.chars().count() > max {
        return Err(InvalidInput::new(format!(
            "{field} must be at most {max} characters long"
        )));
    }
    Ok(text)
}

/// At most 50 characters; empty means "show the username".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX: usize = 50;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        profile_text("display_name", raw, Self::MAX).map(Self)
    }

    /// The display name, or `username` when it is empty.
    pub fn or(self, username: &str) -> String {
        if self.0.is_empty() {
            username.to_owned()
        } else {
            self.0
        }
    }

    /// The display name, or the username when none was given.
    pub fn or_username(self, username: &Username) -> String {
        if self.0.is_empty() {
            username.as_str().to_owned()
        } else {
            self.0
        }
    }
}

/// At most 160 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    pub const MAX: usize = 160;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        profile_text("bio", raw, Self::MAX).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Why an input was refused, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(String);

impl InvalidInput {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_accept_the_allowed_alphabet_and_lengths() {
        for ok in ["abc", "Alice_99", "a_b", "x".repeat(15).as_str(), "___"] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn usernames_refuse_bad_lengths_and_characters() {
        let too_long = "x".repeat(16);
        for bad in [
            "",
            "ab",
            too_long.as_str(),
            "has space",
            "dash-ed",
            "dot.ted",
            "émile",
            "abc\n",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
        let err = Username::parse("ab").unwrap_err();
        assert!(err.to_string().contains("3 to 15"));
    }

    #[test]
    fn usernames_are_unique_ignoring_case() {
        let a = Username::parse("Alice").unwrap();
        let b = Username::parse("aLiCe").unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.as_str(), "Alice");
    }

    #[test]
    fn passwords_are_length_checked_in_characters_and_never_printed() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"p".repeat(128)).is_ok());
        assert!(Password::parse(&"p".repeat(129)).is_err());
        // Eight characters, sixteen bytes.
        assert!(Password::parse("ééééééé").is_err());
        assert!(Password::parse("éééééééé").is_ok());
        let secret = Password::parse("hunter2hunter2").unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn profile_text_is_trimmed_normalized_and_bounded() {
        let name = DisplayName::parse("  Ada  ").unwrap();
        assert_eq!(name.or_username(&Username::parse("ada").unwrap()), "Ada");
        let empty = DisplayName::parse("   ").unwrap();
        assert_eq!(empty.or_username(&Username::parse("ada").unwrap()), "ada");
        assert!(DisplayName::parse(&"n".repeat(51)).is_err());
        assert!(DisplayName::parse("tab\there").is_err());
        // "e" + combining acute is one character after NFC.
        let decomposed = "e\u{301}".repeat(160);
        assert_eq!(
            Bio::parse(&decomposed)
                .unwrap()
                .into_inner()
                .chars()
                .count(),
            160
        );
        assert!(Bio::parse(&"b".repeat(161)).is_err());
    }

    #[test]
    fn profile_text_follows_the_text_policy() {
        // The security pass's display name: a zero-width space and a right-to-left override.
        let err = DisplayName::parse("ad\u{200b}min\u{202e}").unwrap_err();
        assert!(err.to_string().contains("zero-width"), "{err}");
        let err = DisplayName::parse("nimda\u{202e}").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("display_name must not contain bidirectional")
        );
        let err = Bio::parse("line\none").unwrap_err();
        assert!(err.to_string().starts_with("bio must not contain control"));
        // Even at an end, where trimming would have hidden it.
        assert!(Bio::parse("bio\u{85}").is_err());
        assert!(Bio::parse("\u{feff}bio").is_err());
        assert!(DisplayName::parse("Émile مرحبا\u{200f}").is_ok());
    }
}
