//! Building event envelopes. The routing key of an event is `<service>.<event>`, derived from its
//! payload in one place ([`routing_key`]) so publishers and bindings cannot disagree.

use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

use crate::clock;

/// The routing key (and `Envelope.type`) of a payload.
pub fn routing_key(payload: &Payload) -> &'static str {
    match payload {
        Payload::UserCreated(_) => "users.user_created",
        Payload::UserUpdated(_) => "users.user_updated",
        Payload::UserDeleted(_) => "users.user_deleted",
        Payload::TweetCreated(_) => "tweets.tweet_created",
        Payload::TweetDeleted(_) => "tweets.tweet_deleted",
        Payload::TweetLiked(_) => "tweets.tweet_liked",
        Payload::TweetUnliked(_) => "tweets.tweet_unliked",
        Payload::Retweeted(_) => "tweets.retweeted",
        Payload::Unretweeted(_) => "tweets.unretweeted",
        Payload::UserFollowed(_) => "followers.user_followed",
        Payload::UserUnfollowed(_) => "followers.user_unfollowed",
    }
}

/// A new envelope, stamped now.
pub fn envelope(event_id: u64, aggregate_id: u64, payload: Payload) -> Envelope {
    Envelope {
        event_id,
        r#type: routing_key(&payload).to_owned(),
        occurred_at: Some(clock::to_timestamp(clock::now_millis())),
        aggregate_id,
        headers: Default::default(),
        payload: Some(payload),
    }
}
