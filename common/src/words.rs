//! How text is cut into words for the search indexes (tweets by their words and tags in the
//! tweets service, people by the words of their display names in the users service): the one
//! place both indexes, and the queries read against them, agree on.
//!
//! - **Normalization.** NFKC (so fullwidth `ｒｕｓｔ` and the ligature `ﬁ` read as `rust` and
//!   `fi`), then Unicode lowercase (`str::to_lowercase`, so `Straße` is `straße` and `ΣΑΣ` is
//!   `σας`). Nothing else: no stemming, no accent folding (`café` and `cafe` differ), no stop
//!   words.
//! - **Words** are the maximal runs of [word characters](is_word_char): Unicode alphanumerics
//!   (letters and digits of every script), `_` and combining marks (without them Devanagari or a
//!   decomposed accent would split a word in two). Everything else separates words: spaces,
//!   punctuation, symbols, emoji, `#` and `@`. Scripts written without spaces (Chinese,
//!   Japanese, Thai) are not segmented: a run of them is one word, found only whole.

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// `text` as the indexes read it: NFKC, then lowercase.
pub fn normalize(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase()
}

/// Whether `c` belongs to a word (see the [module docs](self)).
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || is_combining_mark(c)
}

/// The words of `normalized` text (see [`normalize`]), in order, repeats included.
pub fn words(normalized: &str) -> impl Iterator<Item = &str> {
    normalized
        .split(|c: char| !is_word_char(c))
        .filter(|word| !word.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_letters_digits_underscores_and_marks() {
        let text = normalize("Ada   LOVELACE, née Byron (1815–1852) #math @babbage ｆｕｌｌ");
        assert_eq!(
            words(&text).collect::<Vec<_>>(),
            [
                "ada", "lovelace", "née", "byron", "1815", "1852", "math", "babbage", "full"
            ]
        );
        // A decomposed accent stays in its word; a lone separator makes none.
        assert_eq!(
            words(&normalize("e\u{301}cole")).collect::<Vec<_>>(),
            ["école"]
        );
        assert_eq!(words(" - ").count(), 0);
        assert_eq!(
            words(&normalize("snake_case")).collect::<Vec<_>>(),
            ["snake_case"]
        );
    }
}
