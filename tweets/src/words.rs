//! How tweet text is cut into the terms that hashtags and search index, and how a search query
//! and a tag in a URL are read: the one place both sides of the index agree on.
//!
//! - **Normalization and words**: as [`twtr_common::words`] says (NFKC then lowercase; words
//!   are runs of letters, digits, `_` and combining marks; `#` and `@` separate words), shared
//!   with the people search of the users service.
//! - **Tags**: `#` directly followed by a word, where the `#` does not itself follow a word
//!   character (`c#` and `a#b` hold no tag). A tag is indexed as the term `#word`, and its word
//!   as the term `word` too, so a search for `rust` finds `#rust`, while `#rust` finds only the
//!   tag.
//! - **Limits.** A word or tag is 1 to [`MAX_TERM_CHARS`] characters; a longer run is not indexed
//!   (a pasted hash or URL path). A tweet indexes at most [`MAX_TERMS_PER_TWEET`] distinct terms:
//!   its tags first, then its words, each in order of first appearance. A query holds 1 to
//!   [`MAX_QUERY_TERMS`] distinct terms and at most [`MAX_QUERY_CHARS`] characters.

use twtr_common::words::is_word_char;
pub use twtr_common::words::normalize;

/// The longest word or tag (without its `#`) that is indexed or searched, in characters.
pub const MAX_TERM_CHARS: usize = 64;
/// The most distinct terms (tags and words) one tweet is indexed under.
pub const MAX_TERMS_PER_TWEET: usize = 32;
/// The most terms one search may combine (each must be in a tweet for it to match).
pub const MAX_QUERY_TERMS: usize = 3;
/// The longest search query, in characters before normalization.
pub const MAX_QUERY_CHARS: usize = 280;

/// The words of normalized text, in order, each with whether it is a tag (`#word`).
fn runs(normalized: &str) -> Vec<(bool, &str)> {
    let mut found = Vec::new();
    let mut start: Option<usize> = None;
    // Whether the character before the current run's start was a `#` that opens a tag.
    let mut hash_before = false;
    let mut previous: Option<char> = None;
    let mut tag_opened = false;
    for (at, c) in normalized.char_indices() {
        if is_word_char(c) {
            if start.is_none() {
                start = Some(at);
                hash_before = tag_opened;
            }
        } else {
            if let Some(from) = start.take() {
                found.push((hash_before, &normalized[from..at]));
            }
            // A `#` opens a tag unless it follows a word character (`c#`, `a#b`).
            tag_opened = c == '#' && !previous.is_some_and(is_word_char);
        }
        previous = Some(c);
    }
    if let Some(from) = start {
        found.push((hash_before, &normalized[from..]));
    }
    found
}

fn fits(word: &str) -> bool {
    word.chars().count() <= MAX_TERM_CHARS
}

/// The terms a tweet with `text` is indexed under: `#tag` terms first, then words, each once,
/// in order of first appearance, at most [`MAX_TERMS_PER_TWEET`].
pub fn index_terms(text: &str) -> Vec<String> {
    let normalized = normalize(text);
    let runs = runs(&normalized);
    let tags = runs
        .iter()
        .filter(|(tag, word)| *tag && fits(word))
        .map(|(_, word)| format!("#{word}"));
    let words = runs
        .iter()
        .filter(|(_, word)| fits(word))
        .map(|(_, word)| (*word).to_owned());
    let mut terms: Vec<String> = Vec::new();
    for term in tags.chain(words) {
        if terms.len() == MAX_TERMS_PER_TWEET {
            break;
        }
        if !terms.contains(&term) {
            terms.push(term);
        }
    }
    terms
}

/// Whether `term` (one of [`index_terms`]) is a tag.
pub fn is_tag(term: &str) -> bool {
    term.starts_with('#')
}

/// Why a query or a tag was refused, in words for an API response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidQuery {
    #[error("q must hold 1 to {MAX_QUERY_TERMS} words or #tags")]
    NoTerms,
    #[error("q must hold at most {MAX_QUERY_TERMS} distinct words or #tags, got {0}")]
    TooManyTerms(usize),
    #[error("q must be at most {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("a word or tag must be at most {MAX_TERM_CHARS} characters")]
    TermTooLong,
    #[error(
        "a tag is one word of letters, digits and _ (1 to {MAX_TERM_CHARS} characters), \
         with or without its #, got {0:?}"
    )]
    BadTag(String),
}

/// A search: 1 to [`MAX_QUERY_TERMS`] distinct terms, each as [`index_terms`] writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query(Vec<String>);

impl Query {
    /// Reads `q` as the index reads tweets: its words and `#tags`, each once, in order.
    pub fn parse(q: &str) -> Result<Self, InvalidQuery> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(InvalidQuery::TooLong);
        }
        let normalized = normalize(q);
        let mut terms: Vec<String> = Vec::new();
        for (tag, word) in runs(&normalized) {
            if !fits(word) {
                return Err(InvalidQuery::TermTooLong);
            }
            let term = if tag {
                format!("#{word}")
            } else {
                word.to_owned()
            };
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        match terms.len() {
            0 => Err(InvalidQuery::NoTerms),
            n if n > MAX_QUERY_TERMS => Err(InvalidQuery::TooManyTerms(n)),
            _ => Ok(Self(terms)),
        }
    }

    /// The terms, in the order the query gave them.
    pub fn terms(&self) -> &[String] {
        &self.0
    }

    /// The term whose postings a search walks, checking the others on each: a tag before a
    /// word (a tag's postings are a subset of its word's), then the longest (longer words tend
    /// to be rarer), then the first. A guess, with no statistics to go on; it bounds the work,
    /// not the result.
    pub fn driver(&self) -> &str {
        let mut best = &self.0[0];
        for term in &self.0[1..] {
            let rank = |t: &String| (is_tag(t), t.chars().count());
            if rank(term) > rank(best) {
                best = term;
            }
        }
        best
    }
}

/// A tag as a URL names it (`rust`, `#rust`, `RUST`): its term, `#rust`.
pub fn parse_tag(raw: &str) -> Result<String, InvalidQuery> {
    let bare = raw.strip_prefix('#').unwrap_or(raw);
    let normalized = normalize(bare);
    match runs(&normalized).as_slice() {
        [(false, word)] if *word == normalized && fits(word) => Ok(format!("#{word}")),
        _ => Err(InvalidQuery::BadTag(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        index_terms(text)
    }

    #[test]
    fn tags_come_first_then_words_each_once() {
        assert_eq!(
            terms("Loving #Rust and rust, #rust again! #Tokio_rs"),
            [
                "#rust",
                "#tokio_rs",
                "loving",
                "rust",
                "and",
                "again",
                "tokio_rs"
            ]
        );
    }

    #[test]
    fn normalization_is_nfkc_then_lowercase() {
        assert_eq!(terms("＃ＲＵＳＴ ﬁne"), ["#rust", "rust", "fine"]);
        assert_eq!(terms("Straße ΣΑΣ"), ["straße", "σας"]);
        // A decomposed accent stays in its word, and reads as the composed one.
        assert_eq!(terms("cafe\u{301} café"), ["café"]);
        assert_eq!(terms("हिन्दी"), ["हिन्दी"]);
    }

    #[test]
    fn punctuation_symbols_and_emoji_separate_words() {
        assert_eq!(
            terms("hi@there, it's 2024-05-01 🦀crab"),
            ["hi", "there", "it", "s", "2024", "05", "01", "crab"]
        );
        assert!(terms("🦀 !!! ...").is_empty());
    }

    #[test]
    fn a_hash_after_a_word_character_opens_no_tag() {
        assert_eq!(
            terms("c# a#b #ok ##x"),
            ["#ok", "#x", "c", "a", "b", "ok", "x"]
        );
        assert_eq!(terms("#"), Vec::<String>::new());
        assert_eq!(terms("(#paren)"), ["#paren", "paren"]);
    }

    #[test]
    fn over_long_runs_are_not_indexed_and_terms_are_capped() {
        let long = "x".repeat(MAX_TERM_CHARS + 1);
        let max = "y".repeat(MAX_TERM_CHARS);
        assert_eq!(terms(&format!("#{long} {max} ok")), [max.as_str(), "ok"]);
        let many: Vec<String> = (0..50).map(|n| format!("w{n}")).collect();
        let got = terms(&format!("#tag {}", many.join(" ")));
        assert_eq!(got.len(), MAX_TERMS_PER_TWEET);
        assert_eq!(got[0], "#tag");
        assert_eq!(got[1], "tag");
        assert_eq!(got[2], "w0");
    }

    #[test]
    fn queries_hold_one_to_three_distinct_terms() {
        let q = Query::parse("Rust #RUST rust").unwrap();
        assert_eq!(q.terms(), ["rust", "#rust"]);
        assert_eq!(q.driver(), "#rust");
        assert_eq!(Query::parse("tokio runtime").unwrap().driver(), "runtime");
        assert_eq!(Query::parse("ab cd").unwrap().driver(), "ab");
        assert_eq!(Query::parse(""), Err(InvalidQuery::NoTerms));
        assert_eq!(Query::parse(" ?! 🦀"), Err(InvalidQuery::NoTerms));
        assert_eq!(Query::parse("a b c d"), Err(InvalidQuery::TooManyTerms(4)));
        let long = "z".repeat(MAX_TERM_CHARS + 1);
        assert_eq!(Query::parse(&long), Err(InvalidQuery::TermTooLong));
        let huge = "a ".repeat(MAX_QUERY_CHARS);
        assert_eq!(Query::parse(&huge), Err(InvalidQuery::TooLong));
    }

    #[test]
    fn a_tag_in_a_url_is_one_word_with_or_without_its_hash() {
        assert_eq!(parse_tag("Rust").unwrap(), "#rust");
        assert_eq!(parse_tag("#rust").unwrap(), "#rust");
        assert_eq!(parse_tag("ｒｕｓｔ").unwrap(), "#rust");
        for bad in ["", "#", "two words", "a-b", "##x", &"q".repeat(65)] {
            assert!(parse_tag(bad).is_err(), "{bad:?}");
        }
    }
}
