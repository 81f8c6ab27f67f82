//! The kinds of domain events and the envelopes they travel in. The routing key of an event is
//! `<service>.<event>`, fixed per [`EventKind`] in one place: publishers stamp it from the
//! payload ([`routing_key`]) and consumers bind their queues to kinds
//! ([`crate::bus::ConsumerSettings::queue`]), so a binding cannot name a key nobody publishes.

use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

use crate::{clock, context};

/// One kind of domain event: one payload of `twtr.events.v1.Envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    UserCreated,
    UserUpdated,
    UserDeleted,
    TweetCreated,
    TweetDeleted,
    TweetLiked,
    TweetUnliked,
    Retweeted,
    Unretweeted,
    UserFollowed,
    UserUnfollowed,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 11] = [
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::TweetCreated,
        Self::TweetDeleted,
        Self::TweetLiked,
        Self::TweetUnliked,
        Self::Retweeted,
        Self::Unretweeted,
        Self::UserFollowed,
        Self::UserUnfollowed,
    ];

    /// The kind of a payload.
    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::UserCreated(_) => Self::UserCreated,
            Payload::UserUpdated(_) => Self::UserUpdated,
            Payload::UserDeleted(_) => Self::UserDeleted,
            Payload::TweetCreated(_) => Self::TweetCreated,
            Payload::TweetDeleted(_) => Self::TweetDeleted,
            Payload::TweetLiked(_) => Self::TweetLiked,
            Payload::TweetUnliked(_) => Self::TweetUnliked,
            Payload::Retweeted(_) => Self::Retweeted,
            Payload::Unretweeted(_) => Self::Unretweeted,
            Payload::UserFollowed(_) => Self::UserFollowed,
            Payload::UserUnfollowed(_) => Self::UserUnfollowed,
        }
    }

    /// Its routing key (and `Envelope.type`): `<publishing service>.<event>`.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::UserCreated => "users.user_created",
            Self::UserUpdated => "users.user_updated",
            Self::UserDeleted => "users.user_deleted",
            Self::TweetCreated => "tweets.tweet_created",
            Self::TweetDeleted => "tweets.tweet_deleted",
            Self::TweetLiked => "tweets.tweet_liked",
            Self::TweetUnliked => "tweets.tweet_unliked",
            Self::Retweeted => "tweets.retweeted",
            Self::Unretweeted => "tweets.unretweeted",
            Self::UserFollowed => "followers.user_followed",
            Self::UserUnfollowed => "followers.user_unfollowed",
        }
    }
}

/// The routing key (and `Envelope.type`) of a payload.
pub fn routing_key(payload: &Payload) -> &'static str {
    EventKind::of(payload).routing_key()
}

/// A new envelope, stamped now, carrying the current request id and trace context (if any) in
/// its headers.
pub fn envelope(event_id: u64, aggregate_id: u64, payload: Payload) -> Envelope {
    let mut headers: std::collections::HashMap<String, String> = context::current()
        .map(|id| (context::REQUEST_ID.to_owned(), id))
        .into_iter()
        .collect();
    context::inject_trace(&mut headers);
    Envelope {
        event_id,
        r#type: routing_key(&payload).to_owned(),
        occurred_at: Some(clock::to_timestamp(clock::now_millis())),
        aggregate_id,
        headers,
        payload: Some(payload),
    }
}

#[cfg(test)]
mod tests {
    use twtr_proto::events::v1::UserDeleted;

    use super::*;

    #[tokio::test]
    async fn events_carry_the_request_id_that_caused_them() {
        let payload = || {
            Payload::UserDeleted(UserDeleted {
                user_id: 1,
                username: "gone".into(),
            })
        };
        let event = context::scope("req-1".into(), async { envelope(9, 1, payload()) }).await;
        assert_eq!(
            event.headers.get(context::REQUEST_ID).map(String::as_str),
            Some("req-1")
        );
        assert_eq!(event.r#type, "users.user_deleted");
        assert!(envelope(9, 1, payload()).headers.is_empty());
    }
}
