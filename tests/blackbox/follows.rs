//! Follows end to end over HTTP (and the followers service's gRPC API) on both backends:
//! follower and following lists that page newest follow first, exact counts under concurrent
//! follows, and the removal of every edge of a deleted account.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use twtr_proto::followers::v1::followers_service_client::FollowersServiceClient;
use twtr_proto::followers::v1::{
    BatchGetCountsRequest, FollowRequest, ListFollowsRequest, UnfollowRequest,
};

use crate::support::{CONVERGE, TestMesh, as_user, eventually, ids, on_both_backends, text};

on_both_backends! {
    lists => lists_page_newest_follow_first_without_overlap_or_skip,
    concurrent_followers => concurrent_followers_are_counted_exactly,
    account_deletion => a_deleted_account_leaves_no_edge_in_any_list_or_count,
    suggestions => suggestions_are_friends_of_friends_best_supported_first,
}

/// `GET /v1/users/me/suggestions`: people followed by the people the caller follows, by how many
/// of those follow them; never the caller, whom they follow, or a deleted account.
pub async fn suggestions_are_friends_of_friends_best_supported_first(mesh: &TestMesh) {
    let (_, my_token) = mesh.user("sugg_me").await;
    let (b, b_token) = mesh.user("sugg_b").await;
    let (c, c_token) = mesh.user("sugg_c").await;
    let (d, d_token) = mesh.user("sugg_d").await;
    let (e, _) = mesh.user("sugg_e").await;
    let (f, _) = mesh.user("sugg_f").await;
    for followee in [&b, &c, &e] {
        mesh.follow(&my_token, followee).await;
    }
    // d: followed by b and c; f: by b only; e: by b, but the caller follows e already.
    mesh.follow(&b_token, &d).await;
    mesh.follow(&c_token, &d).await;
    mesh.follow(&b_token, &f).await;
    mesh.follow(&b_token, &e).await;

    let suggested = |body: &Value| -> Vec<(String, u64)> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| {
                (
                    text(&item["user"]["id"]),
                    item["followed_by"].as_u64().expect("a count"),
                )
            })
            .collect()
    };
    let (status, body) = mesh.get("/v1/users/me/suggestions", Some(&my_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        suggested(&body),
        vec![(d.clone(), 2), (f.clone(), 1)],
        "{body}"
    );
    assert_eq!(
        body["items"][0]["user"]["username"], "sugg_d",
        "hydrated users"
    );

    let (status, body) = mesh
        .get("/v1/users/me/suggestions?limit=1", Some(&my_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(suggested(&body), vec![(d.clone(), 2)]);
    for bad in ["limit=51", "limit=0", "limit=1&limit=2"] {
        let (status, body) = mesh
            .get(&format!("/v1/users/me/suggestions?{bad}"), Some(&my_token))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{bad}: {body}");
    }
    let (status, _) = mesh.get("/v1/users/me/suggestions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A deleted account is suggested no more.
    let (status, body) = mesh.delete("/v1/users/me", Some(&d_token)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    eventually(
        "the deleted account leaves the suggestions",
        CONVERGE,
        || async {
            let (_, body) = mesh.get("/v1/users/me/suggestions", Some(&my_token)).await;
            (suggested(&body) == vec![(f.clone(), 1)]).then_some(())
        },
    )
    .await;
}

async fn follow_status(mesh: &TestMesh, method: Method, token: &str, user_id: &str) -> StatusCode {
    let path = format!("/v1/users/{user_id}/follow");
    mesh.call(method, &path, Some(token), None).await.0
}

/// Every page of a list (`followers` or `following`), `limit` at a time, by `next` cursors.
async fn walk(mesh: &TestMesh, user_id: &str, list: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("/v1/users/{user_id}/{list}?limit={limit}");
    loop {
        let (status, page) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let got = page["items"].as_array().expect("items").clone();
        assert!(got.len() <= limit, "{page}");
        items.extend(got.iter().cloned());
        match &page["next"] {
            Value::Null => return items,
            next => {
                assert_eq!(got.len(), limit, "a page with a next is full: {page}");
                path = format!(
                    "/v1/users/{user_id}/{list}?limit={limit}&before={}",
                    text(next)
                );
            }
        }
    }
}

fn listed_ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|user| text(&user["id"])).collect()
}

async fn profile(mesh: &TestMesh, user_id: &str) -> Value {
    let (status, user) = mesh.get(&format!("/v1/users/{user_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    user
}

pub async fn lists_page_newest_follow_first_without_overlap_or_skip(mesh: &TestMesh) {
    let (star, star_token) = mesh.user("star").await;
    let mut fans = Vec::new();
    for n in 0..7 {
        fans.push(mesh.user(&format!("fan{n}")).await);
    }
    for (_, token) in &fans {
        mesh.follow(token, &star).await;
    }
    let (other, _) = mesh.user("other").await;
    mesh.follow(&fans[0].1, &other).await;
    mesh.follow(&star_token, &other).await;
    mesh.tweet(&fans[6].1, "counted in the list view").await;

    let newest_first: Vec<String> = fans.iter().rev().map(|(id, _)| id.clone()).collect();
    for limit in [1, 3, 7, 100] {
        let walked = walk(mesh, &star, "followers", limit).await;
        assert_eq!(listed_ids(&walked), newest_first, "pages of {limit}");
    }
    // Items are whole users, counts included.
    let (_, first) = mesh
        .get(&format!("/v1/users/{star}/followers?limit=1"), None)
        .await;
    let top = &first["items"][0];
    assert_eq!(text(&top["id"]), fans[6].0);
    assert_eq!(top["username"], "fan6");
    assert_eq!(top["display_name"], "fan6");
    assert_eq!(top["bio"], "");
    assert!(
        top["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{top}"
    );
    assert_eq!(
        (
            top["followers_count"].clone(),
            top["following_count"].clone(),
            top["tweets_count"].clone()
        ),
        (Value::from(0), Value::from(1), Value::from(1)),
        "{top}"
    );
    let following = walk(mesh, &fans[0].0, "following", 1).await;
    assert_eq!(listed_ids(&following), vec![other.clone(), star.clone()]);
    let following = walk(mesh, &star, "following", 5).await;
    assert_eq!(listed_ids(&following), vec![other.clone()]);
    assert_eq!(
        listed_ids(&walk(mesh, &other, "followers", 20).await),
        vec![star.clone(), fans[0].0.clone()]
    );

    // The oldest fan leaves and comes back: on top of the list, counted once.
    let (oldest, oldest_token) = &fans[0];
    assert_eq!(
        follow_status(mesh, Method::DELETE, oldest_token, &star).await,
        StatusCode::NO_CONTENT
    );
    let walked = listed_ids(&walk(mesh, &star, "followers", 2).await);
    assert!(!walked.contains(oldest), "unfollowed: {walked:?}");
    assert_eq!(walked.len(), 6);
    mesh.follow(oldest_token, &star).await;
    let walked = listed_ids(&walk(mesh, &star, "followers", 2).await);
    let mut expected = vec![oldest.clone()];
    expected.extend(newest_first[..6].iter().cloned());
    assert_eq!(walked, expected, "a follow again goes on top");
    assert_eq!(profile(mesh, &star).await["followers_count"], 7);
    assert_eq!(
        listed_ids(&walk(mesh, oldest, "following", 1).await),
        vec![star.clone(), other.clone()]
    );

    // Unknown users are 404s, malformed input 400s.
    for list in ["followers", "following"] {
        let (status, body) = mesh.get(&format!("/v1/users/12345/{list}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _) = mesh.get(&format!("/v1/users/abc/{list}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        for query in ["limit=0", "limit=101", "before=x"] {
            let path = format!("/v1/users/{star}/{list}?{query}");
            let (status, body) = mesh.get(&path, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        }
    }
    let (_, empty) = mesh
        .get(&format!("/v1/users/{other}/following"), None)
        .await;
    assert_eq!(ids(&empty), Vec::<String>::new());
    assert_eq!(empty["next"], Value::Null);
}

pub async fn concurrent_followers_are_counted_exactly(mesh: &TestMesh) {
    const FANS: usize = 12;
    let (star, _) = mesh.user("idol").await;
    let mut fans = Vec::new();
    for n in 0..FANS {
        fans.push(mesh.user(&format!("crowd{n}")).await);
    }
    let follows = fans.iter().map(|(_, token)| async {
        let (first, again) = tokio::join!(
            follow_status(mesh, Method::POST, token, &star),
            follow_status(mesh, Method::POST, token, &star),
        );
        (first, again)
    });
    for (first, again) in join_all(follows).await {
        assert_eq!(
            (first, again),
            (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT)
        );
    }
    assert_eq!(profile(mesh, &star).await["followers_count"], FANS);
    assert_eq!(walk(mesh, &star, "followers", 5).await.len(), FANS);

    // Even fans leave (twice each, at once) while odd fans follow again.
    let changes = fans.iter().enumerate().map(|(i, (_, token))| {
        let method = if i % 2 == 0 {
            Method::DELETE
        } else {
            Method::POST
        };
        let star = &star;
        async move {
            let (a, b) = tokio::join!(
                follow_status(mesh, method.clone(), token, star),
                follow_status(mesh, method.clone(), token, star),
            );
            (a, b)
        }
    });
    for statuses in join_all(changes).await {
        assert_eq!(statuses, (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT));
    }
    let star_now = profile(mesh, &star).await;
    assert_eq!(star_now["followers_count"], FANS / 2, "{star_now}");
    let listed = listed_ids(&walk(mesh, &star, "followers", 4).await);
    assert_eq!(listed.len(), FANS / 2);
    for (i, (fan, _)) in fans.iter().enumerate() {
        assert_eq!(listed.contains(fan), i % 2 == 1, "fan {i}");
        let expected = usize::from(i % 2 == 1);
        assert_eq!(
            profile(mesh, fan).await["following_count"],
            expected,
            "fan {i}"
        );
    }
}

pub async fn a_deleted_account_leaves_no_edge_in_any_list_or_count(mesh: &TestMesh) {
    let (gone, gone_token) = mesh.user("leaving").await;
    let mut fans = Vec::new();
    for n in 0..3 {
        fans.push(mesh.user(&format!("fan_{n}")).await);
    }
    let mut idols = Vec::new();
    for n in 0..2 {
        idols.push(mesh.user(&format!("idol_{n}")).await);
    }
    for (_, token) in &fans {
        mesh.follow(token, &gone).await;
    }
    for (idol, _) in &idols {
        mesh.follow(&gone_token, idol).await;
    }
    // An edge between others, which stays.
    mesh.follow(&fans[0].1, &idols[0].0).await;
    assert_eq!(profile(mesh, &gone).await["followers_count"], 3);

    let (status, _) = mesh.delete("/v1/users/me", Some(&gone_token)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // At once, whether or not the purge has reached them: the lists answer without the deleted
    // account, and its own lists are 404s.
    let (status, page) = mesh
        .get(&format!("/v1/users/{}/following", fans[0].0), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!ids(&page).contains(&gone), "{page}");
    let (status, page) = mesh
        .get(&format!("/v1/users/{}/followers", idols[1].0), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!ids(&page).contains(&gone), "{page}");
    for list in ["followers", "following"] {
        let (status, _) = mesh.get(&format!("/v1/users/{gone}/{list}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    // The purge: no edge left in either direction, every count back.
    let gone_id: u64 = gone.parse().unwrap();
    let mut followers = FollowersServiceClient::connect(format!("http://{}", mesh.followers))
        .await
        .unwrap();
    let everyone: Vec<u64> = fans
        .iter()
        .chain(&idols)
        .map(|(id, _)| id.parse().unwrap())
        .chain([gone_id])
        .collect();
    eventually("the deleted account's edges to go", CONVERGE, || {
        let mut followers = followers.clone();
        let everyone = everyone.clone();
        async move {
            let list = |user_id| ListFollowsRequest {
                user_id,
                limit: 100,
                ..ListFollowsRequest::default()
            };
            let theirs = followers.list_followers(list(gone_id)).await.unwrap();
            let ours = followers.list_following(list(gone_id)).await.unwrap();
            let counts = followers
                .batch_get_counts(BatchGetCountsRequest { user_ids: everyone })
                .await
                .unwrap()
                .into_inner()
                .counts;
            let counts: Vec<(u64, u64)> = counts
                .iter()
                .map(|c| (c.followers_count, c.following_count))
                .collect();
            let edges_gone =
                theirs.into_inner().entries.is_empty() && ours.into_inner().entries.is_empty();
            // fan_0 follows idol_0 still; nothing else is left.
            let expected = vec![(0, 1), (0, 0), (0, 0), (1, 0), (0, 0), (0, 0)];
            (edges_gone && counts == expected).then_some(())
        }
    })
    .await;
    for (fan, _) in &fans {
        assert!(!listed_ids(&walk(mesh, fan, "following", 10).await).contains(&gone));
    }
    assert_eq!(
        listed_ids(&walk(mesh, &idols[0].0, "followers", 10).await),
        vec![fans[0].0.clone()]
    );
    assert!(walk(mesh, &idols[1].0, "followers", 10).await.is_empty());

    // Following the deleted account is a 404, over HTTP and directly over gRPC with a validly
    // signed token (the gateway's revocation check is not there), where the followers service's
    // own record refuses it on either end.
    assert_eq!(
        follow_status(mesh, Method::POST, &fans[1].1, &gone).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        follow_status(mesh, Method::DELETE, &fans[1].1, &gone).await,
        StatusCode::NOT_FOUND
    );
    let fan: u64 = fans[1].0.parse().unwrap();
    let idol: u64 = idols[0].0.parse().unwrap();
    let gone_token = mesh.token_for(&gone);
    for (follower_id, followee_id, token) in
        [(fan, gone_id, &fans[1].1), (gone_id, idol, &gone_token)]
    {
        let follow = FollowRequest {
            follower_id,
            followee_id,
        };
        let refused = followers.follow(as_user(token, follow)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        let unfollow = UnfollowRequest {
            follower_id,
            followee_id,
        };
        let refused = followers
            .unfollow(as_user(token, unfollow))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    }
    assert_eq!(profile(mesh, &idols[0].0).await["followers_count"], 1);
}
