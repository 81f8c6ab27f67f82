//! People search: which words of a display name are indexed, how a query is read, and how much
//! work one search may do. The stores hold two lookups (see `UserStore::find_by_username_prefix`
//! and `UserStore::find_by_name_word`), both written with the account in the same transaction
//! or logged batch; [`crate::Users::search_users`] combines them.
//!
//! - **By username**: a query that could be a username (1 to 15 of `A-Za-z0-9_`, a leading `@`
//!   ignored) matches it exactly, ignoring case, and as a prefix of longer names from
//!   [`MIN_PREFIX_CHARS`] characters on (a one-character prefix would name a twentieth of all
//!   accounts). The CQL lookup is partitioned by the name's first two characters, so no
//!   partition holds more than the accounts sharing those two.
//! - **By display name**: the query's words (cut and normalized as [`twtr_common::words`] says:
//!   NFKC, lowercase, runs of letters, digits and `_`) must all be words of the display name,
//!   whole; 1 to [`MAX_QUERY_WORDS`] of them. A display name is indexed under its first
//!   [`MAX_NAME_WORDS`] distinct words.
//! - **Bounded work**: one search reads at most [`PREFIX_CANDIDATES`] accounts by username
//!   prefix (in username order) and [`WORD_CANDIDATES`] by the first word of the query (in
//!   account order), then checks the other words against each candidate's display name. So a
//!   common prefix or word finds some of its accounts, not the best of all of them.
//! - **Order**: exact username first, then username prefixes, then display-name matches. Within
//!   each, the caller orders (the gateway: most followers first), since follower counts live
//!   with the followers service.

use std::collections::HashSet;

use twtr_common::words::{normalize, words};

use crate::domain::{InvalidInput, Username};

/// The shortest query that matches usernames by prefix.
pub const MIN_PREFIX_CHARS: usize = 2;
/// The longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 64;
/// The most words a query may hold (each must be in the display name).
pub const MAX_QUERY_WORDS: usize = 3;
/// The most distinct words of one display name that are indexed.
pub const MAX_NAME_WORDS: usize = 16;
/// The most accounts one search reads by username prefix.
pub const PREFIX_CANDIDATES: usize = 50;
/// The most accounts one search reads by a display-name word.
pub const WORD_CANDIDATES: usize = 100;

/// How a search result matched, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKind {
    ExactUsername,
    UsernamePrefix,
    DisplayName,
}

/// The words a display name is indexed under: distinct, in order of first appearance, at most
/// [`MAX_NAME_WORDS`].
pub fn name_words(display_name: &str) -> Vec<String> {
    let normalized = normalize(display_name);
    let mut seen = HashSet::new();
    words(&normalized)
        .filter(|word| seen.insert(*word))
        .take(MAX_NAME_WORDS)
        .map(str::to_owned)
        .collect()
}

/// A people search, read from its query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeopleQuery {
    /// The query as a lowercase username or username prefix, when it can be one.
    pub username: Option<String>,
    /// The query's distinct words, for display names.
    pub words: Vec<String>,
}

impl PeopleQuery {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let text = raw.trim();
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(InvalidInput::new(format!(
                "q must be at most {MAX_QUERY_CHARS} characters long"
            )));
        }
        let name = text.strip_prefix('@').unwrap_or(text);
        let username = (!name.is_empty()
            && name.len() <= Username::MAX
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| name.to_ascii_lowercase());
        let normalized = normalize(text);
        let mut seen = HashSet::new();
        let words: Vec<String> = words(&normalized)
            .filter(|word| seen.insert(*word))
            .map(str::to_owned)
            .collect();
        if words.len() > MAX_QUERY_WORDS {
            return Err(InvalidInput::new(format!(
                "q may hold at most {MAX_QUERY_WORDS} words"
            )));
        }
        if username.is_none() && words.is_empty() {
            return Err(InvalidInput::new(
                "q must hold a username or a word of a display name",
            ));
        }
        Ok(Self { username, words })
    }

    /// The username prefix to look up, when the query is long enough to be one.
    pub fn prefix(&self) -> Option<&str> {
        self.username
            .as_deref()
            .filter(|name| name.len() >= MIN_PREFIX_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_is_indexed_under_its_distinct_words() {
        assert_eq!(name_words("Ada  Lovelace, ADA"), ["ada", "lovelace"]);
        assert_eq!(name_words("🦀 Ｒｕｓｔ-lang"), ["rust", "lang"]);
        assert!(name_words("  ").is_empty());
        let many: String = (0..30).map(|i| format!("w{i} ")).collect();
        assert_eq!(name_words(&many).len(), MAX_NAME_WORDS);
    }

    #[test]
    fn a_query_is_a_username_or_prefix_and_words() {
        let query = PeopleQuery::parse(" @Ada_L ").unwrap();
        assert_eq!(query.username.as_deref(), Some("ada_l"));
        assert_eq!(query.words, ["ada_l"]);
        assert_eq!(query.prefix(), Some("ada_l"));

        let query = PeopleQuery::parse("Ada Lovelace").unwrap();
        assert_eq!(query.username, None);
        assert_eq!(query.words, ["ada", "lovelace"]);

        // One character: a username only exactly (none is that short) and a word.
        let query = PeopleQuery::parse("a").unwrap();
        assert_eq!((query.prefix(), query.words.len()), (None, 1));

        let query = PeopleQuery::parse("Émile").unwrap();
        assert_eq!(
            (query.username, query.words),
            (None, vec!["émile".to_owned()])
        );
    }

    #[test]
    fn a_query_with_nothing_to_match_or_too_much_is_refused() {
        for bad in ["", "  ", "@", "-- !", "one two three four"] {
            assert!(PeopleQuery::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PeopleQuery::parse(&"x".repeat(MAX_QUERY_CHARS + 1)).is_err());
        assert!(PeopleQuery::parse(&"x".repeat(MAX_QUERY_CHARS)).is_ok());
        // Repeated words count once.
        assert!(PeopleQuery::parse("ada ada ada ada").is_ok());
    }
}
