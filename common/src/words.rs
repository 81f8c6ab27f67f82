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

/// Mentions read per tweet: the first this many distinct names count, the rest stay text.
pub const MAX_MENTIONS: usize = 10;

/// The usernames `text` mentions, lowercased, each once, in order of first appearance, at most
/// [`MAX_MENTIONS`]. A mention is `@` followed by a run of 3 to 15 of `A-Za-z0-9_` (the shape
/// of a username) that no other word character follows, where the `@` does not follow a word
/// character: `a@b.com`, `@ab`, `@sixteen_letters_` and `@bobé` mention no one. Whether the
/// name is taken is for the caller to resolve.
pub fn mentioned_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let after_word = previous.is_some_and(is_word_char);
        previous = Some(c);
        if c != '@' || after_word {
            continue;
        }
        let start = at + 1;
        let run = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |len| start + len);
        let name = &text[start..run];
        let followed_by_word = text[run..].chars().next().is_some_and(is_word_char);
        if (3..=15).contains(&name.len()) && !followed_by_word {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
                if names.len() == MAX_MENTIONS {
                    break;
                }
            }
        }
        // The name's characters are word characters: none of them starts a mention.
        while chars.peek().is_some_and(|&(i, _)| i < run) {
            previous = chars.next().map(|(_, c)| c);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_username_shaped_names_after_a_free_standing_at() {
        let names = |text| mentioned_names(text);
        assert_eq!(names("hi @Ada and @bob_1!"), ["ada", "bob_1"]);
        assert_eq!(names("@ada @ADA @Ada."), ["ada"], "once, lowercased");
        assert_eq!(names("(@ada) \"@bob\" @@carol"), ["ada", "bob", "carol"]);
        assert!(
            names("mail a@b.com or x@ada").is_empty(),
            "after a word character"
        );
        assert!(names("@ab @").is_empty(), "too short");
        assert!(names("@sixteen_letters_").is_empty(), "too long");
        assert_eq!(names("@fifteen_letter"), ["fifteen_letter"]);
        assert!(
            names("@bobé @名前").is_empty(),
            "a non-ASCII word character continues it"
        );
        assert!(
            names("é@ada").is_empty(),
            "a non-ASCII word character before"
        );
        assert_eq!(
            names("@ada's #tag@bob"),
            ["ada"],
            "'s ends it; tag@ is glued"
        );
        let many: String = (0..12).map(|i| format!("@user{i:02} ")).collect();
        let first: Vec<String> = (0..10).map(|i| format!("user{i:02}")).collect();
        assert_eq!(names(&many), first, "the first ten");
        assert!(names("").is_empty());
    }

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
