//! Validated tweet input.

use twtr_common::text::{self, TextKind, TextViolation};
use unicode_normalization::UnicodeNormalization as _;

/// The text of a tweet: within the text policy for tweets (no control characters but newline
/// and tab, no bidirectional overrides or isolates), NFC-normalized, surrounding whitespace
/// trimmed, then 1 to 280 characters counted as Unicode scalar values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TweetText(String);

impl TweetText {
    pub const MAX: usize = 280;

    pub fn parse(raw: &str) -> Result<Self, InvalidText> {
        text::check("tweet text", raw, TextKind::Tweet)?;
        let text: String = raw.trim().nfc().collect();
        let len = text.chars().count();
        if len == 0 {
            return Err(InvalidText::Empty);
        }
        if len > Self::MAX {
            return Err(InvalidText::TooLong(len));
        }
        Ok(Self(text))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidText {
    #[error("tweet text must not be empty")]
    Empty,
    #[error("tweet text must be at most 280 characters, got {0}")]
    TooLong(usize),
    #[error(transparent)]
    Forbidden(#[from] TextViolation),
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters, as clients generate them (UUIDs,
/// random tokens). Compared exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, InvalidKey> {
        if raw.is_empty() || raw.len() > Self::MAX || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidKey);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1 to 255 visible ASCII characters")]
pub struct InvalidKey;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        for good in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            &"k".repeat(255),
        ] {
            assert_eq!(IdempotencyKey::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert_eq!(IdempotencyKey::parse(bad), Err(InvalidKey), "{bad:?}");
        }
    }

    #[test]
    fn accepts_one_to_280_characters() {
        assert_eq!(TweetText::parse("x").unwrap().into_inner(), "x");
        assert!(TweetText::parse(&"x".repeat(280)).is_ok());
        assert_eq!(
            TweetText::parse(&"x".repeat(281)),
            Err(InvalidText::TooLong(281))
        );
    }

    #[test]
    fn empty_or_blank_is_refused() {
        assert_eq!(TweetText::parse(""), Err(InvalidText::Empty));
        assert_eq!(TweetText::parse(" \n\t "), Err(InvalidText::Empty));
    }

    #[test]
    fn counts_scalar_values_after_nfc_not_bytes() {
        // 280 "é" written as e + combining accent: 560 scalars before NFC, 280 after.
        let decomposed = "e\u{301}".repeat(280);
        let text = TweetText::parse(&decomposed).unwrap().into_inner();
        assert_eq!(text.chars().count(), 280);
        assert_eq!(text, "é".repeat(280));
        // 280 emoji are 1120 bytes and still fit.
        assert!(TweetText::parse(&"🦀".repeat(280)).is_ok());
        assert!(TweetText::parse(&"🦀".repeat(281)).is_err());
    }

    #[test]
    fn text_follows_the_text_policy() {
        // What the security pass stored: a NUL, a terminal escape and a right-to-left override.
        let err = TweetText::parse("hi\u{0}there\u{1b}[31mRED\u{202e}").unwrap_err();
        assert!(matches!(err, InvalidText::Forbidden(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("tweet text must not contain control characters")
        );
        let err = TweetText::parse("RED\u{202e}").unwrap_err();
        assert!(err.to_string().contains("bidirectional"), "{err}");
        // Even where trimming would have hidden it.
        assert!(TweetText::parse("text\r\n").is_err());
        assert_eq!(
            TweetText::parse("two\nlines\tand 👩\u{200d}💻")
                .unwrap()
                .into_inner(),
            "two\nlines\tand 👩\u{200d}💻"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed_inner_kept() {
        assert_eq!(
            TweetText::parse("  hello  world \n").unwrap().into_inner(),
            "hello  world"
        );
    }
}
