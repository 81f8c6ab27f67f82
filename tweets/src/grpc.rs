//! The tonic adapter for `twtr.tweets.v1.TweetsService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_common::auth::acting_as;
use twtr_common::{Limit, Page, PageRequest, ServiceError as _, clock};
use twtr_proto::tweets::v1 as pb;
use twtr_proto::tweets::v1::tweets_service_server::{TweetsService, TweetsServiceServer};

use crate::service::{Action, Tweets, TweetsError};
use crate::store::TweetRecord;

pub fn server(tweets: Arc<Tweets>) -> TweetsServiceServer<TweetsGrpc> {
    TweetsServiceServer::new(TweetsGrpc { tweets })
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
        mentions: tweet.mentions,
    }
}

fn to_pb_page(page: Page<TweetRecord>) -> pb::TweetPage {
    pb::TweetPage {
        tweets: page.items.into_iter().map(to_pb).collect(),
        next: page.next,
    }
}

/// A page request from its wire form (limit 0 means the default).
fn page_request(
    before: Option<u64>,
    since: Option<u64>,
    limit: u32,
) -> Result<PageRequest, Status> {
    let limit = Limit::parse(Some(limit)).map_err(|e| TweetsError::from(e).to_status())?;
    Ok(PageRequest {
        before,
        since,
        limit,
    })
}

#[tonic::async_trait]
impl TweetsService for TweetsGrpc {
    async fn create_tweet(
        &self,
        request: Request<pb::CreateTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        acting_as(&request, request.get_ref().author_id)?;
        let r = request.into_inner();
        let tweet = self
            .tweets
            .create_tweet(
                r.author_id,
                &r.text,
                Some(r.idempotency_key.as_str()).filter(|key| !key.is_empty()),
                r.mentions,
            )
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
        if let Some(viewer) = request.get_ref().viewer_id {
            acting_as(&request, viewer)?;
        }
        let r = request.into_inner();
        let tweets = self
            .tweets
            .batch_get_tweets(r.tweet_ids)
            .await
            .map_err(|e| e.to_status())?;
        let viewer_flags = match r.viewer_id {
            None => Vec::new(),
            Some(viewer) => {
                self.flags_of(viewer, tweets.iter().map(|t| t.id).collect())
                    .await?
            }
        };
        Ok(Response::new(pb::BatchGetTweetsResponse {
            tweets: tweets.into_iter().map(to_pb).collect(),
            viewer_flags,
        }))
    }

    async fn list_user_tweets(
        &self,
        request: Request<pb::ListUserTweetsRequest>,
    ) -> Result<Response<pb::TweetPage>, Status> {
        let r = request.into_inner();
        let page = page_request(r.before, r.since, r.limit)?;
        let page = self
            .tweets
            .list_user_tweets(r.author_id, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb_page(page)))
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

    async fn delete_tweet(
        &self,
        request: Request<pb::DeleteTweetRequest>,
    ) -> Result<Response<pb::DeleteTweetResponse>, Status> {
        acting_as(&request, request.get_ref().caller_id)?;
        let r = request.into_inner();
        self.tweets
            .delete_tweet(r.caller_id, r.tweet_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::DeleteTweetResponse {}))
    }

    async fn like_tweet(
        &self,
        request: Request<pb::TweetActionRequest>,
    ) -> Result<Response<pb::TweetActionResponse>, Status> {
        self.act(Action::Like, request).await
    }

    async fn unlike_tweet(
        &self,
        request: Request<pb::TweetActionRequest>,
    ) -> Result<Response<pb::TweetActionResponse>, Status> {
        self.act(Action::Unlike, request).await
    }

    async fn retweet(
        &self,
        request: Request<pb::TweetActionRequest>,
    ) -> Result<Response<pb::TweetActionResponse>, Status> {
        self.act(Action::Retweet, request).await
    }

    async fn unretweet(
        &self,
        request: Request<pb::TweetActionRequest>,
    ) -> Result<Response<pb::TweetActionResponse>, Status> {
        self.act(Action::Unretweet, request).await
    }

    async fn batch_get_viewer_flags(
        &self,
        request: Request<pb::BatchGetViewerFlagsRequest>,
    ) -> Result<Response<pb::BatchGetViewerFlagsResponse>, Status> {
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        Ok(Response::new(pb::BatchGetViewerFlagsResponse {
            flags: self.flags_of(r.user_id, r.tweet_ids).await?,
        }))
    }

    async fn get_public_timeline(
        &self,
        request: Request<pb::GetPublicTimelineRequest>,
    ) -> Result<Response<pb::TweetPage>, Status> {
        let r = request.into_inner();
        let page = page_request(r.before, r.since, r.limit)?;
        let page = self
            .tweets
            .public_timeline(page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb_page(page)))
    }

    async fn list_tag_tweets(
        &self,
        request: Request<pb::ListTagTweetsRequest>,
    ) -> Result<Response<pb::TweetPage>, Status> {
        let r = request.into_inner();
        let page = page_request(r.before, r.since, r.limit)?;
        let page = self
            .tweets
            .tag_tweets(&r.tag, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb_page(page)))
    }

    async fn search_tweets(
        &self,
        request: Request<pb::SearchTweetsRequest>,
    ) -> Result<Response<pb::TweetPage>, Status> {
        let r = request.into_inner();
        let page = page_request(r.before, r.since, r.limit)?;
        let page = self
            .tweets
            .search(&r.query, page)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(to_pb_page(page)))
    }

    async fn get_trends(
        &self,
        request: Request<pb::GetTrendsRequest>,
    ) -> Result<Response<pb::GetTrendsResponse>, Status> {
        let limit = Limit::parse(Some(request.into_inner().limit))
            .map_err(|e| TweetsError::from(e).to_status())?;
        let trends = self.tweets.trends(limit).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::GetTrendsResponse {
            trends: trends
                .into_iter()
                .map(|(tag, tweet_count)| pb::Trend { tag, tweet_count })
                .collect(),
            as_of: Some(clock::to_timestamp(clock::now_millis())),
            window_minutes: crate::service::TRENDS_WINDOW_MINUTES as u32,
        }))
    }
}

impl TweetsGrpc {
    /// Whether `viewer` likes and retweeted each of `tweet_ids`, in their order.
    async fn flags_of(
        &self,
        viewer: u64,
        tweet_ids: Vec<u64>,
    ) -> Result<Vec<pb::ViewerFlags>, Status> {
        let flags = self
            .tweets
            .viewer_flags(viewer, tweet_ids.clone())
            .await
            .map_err(|e| e.to_status())?;
        Ok(tweet_ids
            .into_iter()
            .zip(flags)
            .map(|(tweet_id, (liked, retweeted))| pb::ViewerFlags {
                tweet_id,
                liked,
                retweeted,
            })
            .collect())
    }

    async fn act(
        &self,
        action: Action,
        request: Request<pb::TweetActionRequest>,
    ) -> Result<Response<pb::TweetActionResponse>, Status> {
        acting_as(&request, request.get_ref().user_id)?;
        let r = request.into_inner();
        let changed = self
            .tweets
            .act(action, r.user_id, r.tweet_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::TweetActionResponse { changed }))
    }
}
