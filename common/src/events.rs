//! Building event envelopes. The routing key of an event is `<service>.<event>`, derived from its
//! payload in one place ([`routing_key`]) so publishers and bindings cannot disagree.

use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

use crate::{clock, context};

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
