//! The tonic adapter for `twtr.tweets.v1.TweetsService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::{Limit, PageRequest, ServiceError as _, clock};
use twtr_proto::tweets::v1 as pb;
use twtr_proto::tweets::v1::tweets_service_server::{TweetsService, TweetsServiceServer};

use crate::service::{Tweets, TweetsError};
use crate::store::TweetRecord;

pub fn server(tweets: Tweets) -> TweetsServiceServer<TweetsGrpc> {
    TweetsServiceServer::new(TweetsGrpc {
        tweets: Arc::new(tweets),
    })
}

pub struct TweetsGrpc {
    tweets: Arc<Tweets>,
}

fn to_pb(tweet: TweetRecord) -> pb::Tweet {
    pb::Tweet {
        id: tweet.id,
        author_id: tweet.author_id,
        text: tweet.text,
        created_at: Some(clock::to_timestamp(tweet.created_at_ms)),
        like_count: tweet.like_count,
        retweet_count: tweet.retweet_count,
    }
}

#[tonic::async_trait]
impl TweetsService for TweetsGrpc {
    async fn create_tweet(
        &self,
        request: Request<pb::CreateTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let r = request.into_inner();
        let tweet = self
            .tweets
            .create_tweet(r.author_id, &r.text)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(tweet)))
    }

    async fn get_tweet(
        &self,
        request: Request<pb::GetTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let tweet = self
            .tweets
            .get_tweet(request.into_inner().tweet_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb(tweet)))
    }

    async fn batch_get_tweets(
        &self,
        request: Request<pb::BatchGetTweetsRequest>,
    ) -> Result<Response<pb::BatchGetTweetsResponse>, Status> {
        let tweets = self
            .tweets
            .batch_get_tweets(request.into_inner().tweet_ids)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::BatchGetTweetsResponse {
            tweets: tweets.into_iter().map(to_pb).collect(),
        }))
    }

    async fn list_user_tweets(
        &self,
        request: Request<pb::ListUserTweetsRequest>,
    ) -> Result<Response<pb::TweetPage>, Status> {
        let r = request.into_inner();
        let limit = Limit::parse(Some(r.limit)).map_err(|e| TweetsError::from(e).to_status())?;
        let page = PageRequest {
            before: r.before,
            since: r.since,
            limit,
        };
        let page = self
            .tweets
            .list_user_tweets(r.author_id, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::TweetPage {
            tweets: page.items.into_iter().map(to_pb).collect(),
            next: page.next,
        }))
    }

    async fn batch_get_tweet_counts(
        &self,
        request: Request<pb::BatchGetTweetCountsRequest>,
    ) -> Result<Response<pb::BatchGetTweetCountsResponse>, Status> {
        let counts = self
            .tweets
            .tweet_counts(request.into_inner().author_ids)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::BatchGetTweetCountsResponse {
            counts: counts
                .into_iter()
                .map(|(author_id, tweets_count)| pb::TweetCount {
                    author_id,
                    tweets_count,
                })
                .collect(),
        }))
    }
}
