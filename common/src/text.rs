//! The text policy: which characters user-written text may hold, shared by every service that
//! stores some (tweet text in the tweets service, display names and bios in the users service).
//!
//! The characters refused are those that make stored text lie about itself when shown: control
//! characters (a terminal escape such as `ESC [31m` recolours a log or an operator's shell, a
//! NUL truncates it in C code), bidirectional overrides and isolates (U+202E shows `exe.txt` as
//! `txt.exe`) and, in names, zero-width characters (two names that look the same). Each refusal
//! names the rule it broke.
//!
//! Kept on purpose: in tweets the tab (harmless whitespace, pasted code) and the zero-width
//! joiner (emoji sequences such as 👩‍💻 need it); the bidirectional *marks* U+200E, U+200F and
//! U+061C everywhere (right-to-left writers need them, and they override nothing). Refused: the
//! carriage return, lone or in `\r\n` (it rewinds a terminal line; clients send `\n`).

use std::fmt;

/// Which kind of text a check applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A tweet: one line or several (`\n`), tabs allowed.
    Tweet,
    /// A display name or a bio: one line, no invisible characters.
    Profile,
}

/// A rule of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRule {
    /// C0 (U+0000–U+001F), DEL and C1 (U+007F–U+009F) controls; in tweets newline and tab are
    /// allowed.
    Control,
    /// Bidirectional embeddings, overrides and isolates: U+202A–U+202E, U+2066–U+2069.
    Bidi,
    /// Zero-width characters: U+200B–U+200D, U+2060, U+FEFF (names and bios only).
    ZeroWidth,
}

/// Why a text was refused: the field and the rule, in words for an API response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextViolation {
    pub field: &'static str,
    pub rule: TextRule,
    pub kind: TextKind,
}

impl fmt::Display for TextViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field;
        match (self.rule, self.kind) {
            (TextRule::Control, TextKind::Tweet) => write!(
                f,
                "{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F) \
                 other than newline and tab"
            ),
            (TextRule::Control, TextKind::Profile) => write!(
                f,
                "{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
            ),
            (TextRule::Bidi, _) => write!(
                f,
                "{field} must not contain bidirectional override or isolate characters \
                 (U+202A-U+202E, U+2066-U+2069)"
            ),
            (TextRule::ZeroWidth, _) => write!(
                f,
                "{field} must not contain zero-width characters (U+200B-U+200D, U+2060, U+FEFF)"
            ),
        }
    }
}

impl std::error::Error for TextViolation {}

/// Checks `text`, the value of `field`, against the policy for `kind`; the first character
/// that breaks a rule decides the answer.
pub fn check(field: &'static str, text: &str, kind: TextKind) -> Result<(), TextViolation> {
    match text.chars().find_map(|c| broken_rule(c, kind)) {
        None => Ok(()),
        Some(rule) => Err(TextViolation { field, rule, kind }),
    }
}

fn broken_rule(c: char, kind: TextKind) -> Option<TextRule> {
    match c {
        '\n' | '\t' if kind == TextKind::Tweet => None,
        // `char::is_control` is exactly the general category Cc: C0, DEL and C1.
        c if c.is_control() => Some(TextRule::Control),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Some(TextRule::Bidi),
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' if kind == TextKind::Profile => {
            Some(TextRule::ZeroWidth)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str, kind: TextKind) -> Option<TextRule> {
        check("field", text, kind).err().map(|v| v.rule)
    }

    #[test]
    fn the_security_pass_inputs_are_refused() {
        assert_eq!(
            rule("hi\u{0}there\u{1b}[31mRED\u{202e}", TextKind::Tweet),
            Some(TextRule::Control)
        );
        assert_eq!(rule("RED\u{202e}", TextKind::Tweet), Some(TextRule::Bidi));
        assert_eq!(
            rule("ad\u{200b}min", TextKind::Profile),
            Some(TextRule::ZeroWidth)
        );
        assert_eq!(
            rule("nimda\u{202e}", TextKind::Profile),
            Some(TextRule::Bidi)
        );
    }

    #[test]
    fn every_control_character_is_refused_but_newline_and_tab_in_tweets() {
        let controls = ('\u{0}'..='\u{1f}').chain('\u{7f}'..='\u{9f}');
        for c in controls {
            let text = format!("a{c}b");
            assert_eq!(
                rule(&text, TextKind::Profile),
                Some(TextRule::Control),
                "{c:?}"
            );
            let in_tweet = rule(&text, TextKind::Tweet);
            if c == '\n' || c == '\t' {
                assert_eq!(in_tweet, None, "{c:?}");
            } else {
                assert_eq!(in_tweet, Some(TextRule::Control), "{c:?}");
            }
        }
        // Carriage returns are refused even as part of a Windows line end.
        assert_eq!(
            rule("line\r\nline", TextKind::Tweet),
            Some(TextRule::Control)
        );
    }

    #[test]
    fn bidi_overrides_and_isolates_are_refused_everywhere_marks_are_not() {
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            for kind in [TextKind::Tweet, TextKind::Profile] {
                assert_eq!(rule(&format!("a{c}b"), kind), Some(TextRule::Bidi), "{c:?}");
            }
        }
        // LRM, RLM and the Arabic letter mark only mark direction.
        for c in ['\u{200e}', '\u{200f}', '\u{61c}'] {
            assert_eq!(rule(&format!("a{c}b"), TextKind::Profile), None, "{c:?}");
        }
    }

    #[test]
    fn zero_width_characters_are_refused_in_profiles_only() {
        for c in ['\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}'] {
            assert_eq!(
                rule(&format!("a{c}b"), TextKind::Profile),
                Some(TextRule::ZeroWidth),
                "{c:?}"
            );
        }
        // An emoji ZWJ sequence is ordinary tweet text.
        assert_eq!(rule("👩\u{200d}💻 at work", TextKind::Tweet), None);
    }

    #[test]
    fn ordinary_text_passes() {
        for text in [
            "hello, world",
            "two\nlines\tand a tab",
            "émile 🦀 שלום עולם مرحبا",
            "",
        ] {
            assert_eq!(rule(text, TextKind::Tweet), None, "{text:?}");
        }
        assert_eq!(rule("Ada Lovelace — ❤", TextKind::Profile), None);
    }

    #[test]
    fn messages_name_the_field_and_the_rule() {
        let err = check("bio", "x\u{feff}", TextKind::Profile).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bio must not contain zero-width characters (U+200B-U+200D, U+2060, U+FEFF)"
        );
        let err = check("tweet text", "\u{1b}[31m", TextKind::Tweet).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tweet text must not contain control characters")
        );
        assert!(err.to_string().contains("other than newline and tab"));
    }
}
