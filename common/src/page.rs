//! Cursor pagination, shared by every list.
//!
//! A page is read either *backwards* (`before` an ID, newest first: the normal case) or
//! *forwards* for polling (`since` an ID: the `limit` oldest items newer than it, still returned
//! newest first, so a poller that repeats with `since` = the newest ID it holds never skips one).
//! Cursors are item IDs, so pages never overlap and never skip, whatever is written meanwhile.

/// The most IDs one batch RPC may carry (`BatchGetUsers`, `BatchGetTweets`, `GetTokenStates`,
/// ...): every service refuses more, and every caller splits its questions into batches of at
/// most this many. One constant for both sides, so a caller cannot outgrow the callee's limit.
pub const MAX_BATCH: usize = 500;

/// How many items a page holds: 1..=[`Limit::MAX`], [`Limit::DEFAULT`] when unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub const DEFAULT: Limit = Limit(20);
    pub const MAX: u32 = 100;

    /// Parses a requested limit; `None` (or 0 on the wire, protobuf's "unset") is the default.
    pub fn parse(requested: Option<u32>) -> Result<Self, InvalidLimit> {
        match requested {
            None | Some(0) => Ok(Self::DEFAULT),
            Some(n) if n <= Self::MAX => Ok(Self(n)),
            Some(n) => Err(InvalidLimit(n)),
        }
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit must be between 1 and {max}, got {0}", max = Limit::MAX)]
pub struct InvalidLimit(pub u32);

/// Which page of a list to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only items with a smaller ID.
    pub before: Option<u64>,
    /// Only items with a larger ID; switches to forward (polling) reading.
    pub since: Option<u64>,
    pub limit: Limit,
}

impl PageRequest {
    pub fn first(limit: Limit) -> Self {
        Self {
            before: None,
            since: None,
            limit,
        }
    }

    /// A page request from its gRPC form, where a limit of 0 means the default.
    pub fn from_wire(
        before: Option<u64>,
        since: Option<u64>,
        limit: u32,
    ) -> Result<Self, InvalidLimit> {
        Ok(Self {
            before,
            since,
            limit: Limit::parse(Some(limit))?,
        })
    }
}

/// One page of a list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `before` cursor of the next, older page; `None` when there is none.
    pub next: Option<u64>,
}

impl<T> Page<T> {
    /// Builds a page from IDs scanned in the direction the request reads, having fetched at
    /// most `limit + 1` of them (the extra one only tells whether more exist).
    pub fn from_scan(
        request: &PageRequest,
        mut scanned: Vec<T>,
        id_of: impl Fn(&T) -> u64,
    ) -> Self {
        let limit = request.limit.get();
        let more = scanned.len() > limit;
        scanned.truncate(limit);
        if request.since.is_some() {
            // Scanned oldest first; a poller asks again with `since`, so no `next` cursor.
            scanned.reverse();
            return Page {
                items: scanned,
                next: None,
            };
        }
        let next = if more {
            scanned.last().map(&id_of)
        } else {
            None
        };
        Page {
            items: scanned,
            next,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(Limit::parse(None), Ok(Limit::DEFAULT));
        assert_eq!(Limit::parse(Some(0)), Ok(Limit::DEFAULT));
        assert_eq!(Limit::parse(Some(1)).map(Limit::get), Ok(1));
        assert_eq!(Limit::parse(Some(100)).map(Limit::get), Ok(100));
        assert_eq!(Limit::parse(Some(101)), Err(InvalidLimit(101)));
        assert!(InvalidLimit(101).to_string().contains("between 1 and 100"));
    }

    fn request(before: Option<u64>, since: Option<u64>, limit: u32) -> PageRequest {
        PageRequest {
            before,
            since,
            limit: Limit::parse(Some(limit)).unwrap(),
        }
    }

    #[test]
    fn a_full_backward_page_points_at_its_last_item() {
        let page = Page::from_scan(&request(None, None, 2), vec![9, 8, 7], |id| *id);
        assert_eq!(page.items, vec![9, 8]);
        assert_eq!(page.next, Some(8));
    }

    #[test]
    fn the_last_backward_page_has_no_next() {
        let page = Page::from_scan(&request(Some(8), None, 2), vec![7, 6], |id| *id);
        assert_eq!(page.items, vec![7, 6]);
        assert_eq!(page.next, None);
    }

    #[test]
    fn a_forward_page_is_returned_newest_first() {
        let page = Page::from_scan(&request(None, Some(5), 2), vec![6, 7, 8], |id| *id);
        assert_eq!(page.items, vec![7, 6]);
        assert_eq!(page.next, None);
    }
}
