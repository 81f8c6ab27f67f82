//! `twtr export` / `twtr import` on the real CQL node: a mesh's keyspaces exported (once in one
//! go, once interrupted and resumed: the same files), imported into a fresh keyspace set that
//! `twtr migrate` made, and a mesh on that set serves the same data.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::processes::{cql_env, fresh_keyspaces, run_migrate};
use crate::support::{Api, CONVERGE, TestMesh, eventually, ids, text};

/// Runs the binary with `args` and `env`; panics with its output unless it succeeds.
async fn twtr(args: &[&str], env: &[(String, String)]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_twtr"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("run twtr");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "twtr {args:?} failed: {said}");
    said
}

/// Every page of a list.
async fn all_ids(api: &Api, path: &str, token: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let url = match &before {
            Some(cursor) => format!("{path}?limit=100&before={cursor}"),
            None => format!("{path}?limit=100"),
        };
        let (status, page) = api.get(&url, token).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        found.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return found,
        }
    }
}

/// What a mesh shows of `usernames`: each user, their lists, and the first one's home feed.
async fn view(api: &Api, usernames: &[&str]) -> BTreeMap<String, Value> {
    let mut seen = BTreeMap::new();
    let mut first_token = None;
    for name in usernames {
        let (status, session) = api
            .post(
                "/v1/sessions",
                None,
                json!({ "username": name, "password": format!("{name}-password") }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "log in {name}: {session}");
        first_token.get_or_insert_with(|| text(&session["token"]));
        let id = text(&session["user"]["id"]);
        let (_, user) = api.get(&format!("/v1/users/{id}"), None).await;
        seen.insert(format!("{name} user"), user);
        for list in ["tweets", "followers", "following"] {
            let listed = all_ids(api, &format!("/v1/users/{id}/{list}"), None).await;
            seen.insert(format!("{name} {list}"), json!(listed));
        }
    }
    let feed = all_ids(api, "/v1/feed", first_token.as_deref()).await;
    seen.insert("feed".to_owned(), json!(feed));
    let timeline = all_ids(api, "/v1/timeline", None).await;
    seen.insert("timeline".to_owned(), json!(timeline));
    seen
}

/// The exported files under `dir`, each line without the TTL it had left (which moves on
/// between two exports).
fn exported(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                let rows = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|line| {
                        let mut row: Value = serde_json::from_str(line).unwrap();
                        row.as_object_mut().unwrap().remove("export_ttl");
                        row
                    })
                    .collect();
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(name, rows);
            }
        }
    }
    files
}

#[tokio::test]
async fn an_export_imported_into_fresh_keyspaces_serves_the_same_data() {
    let Some(source) = TestMesh::start_cql().await else {
        return;
    };
    let nodes = twtr_common::testing::cql_nodes().expect("the node the mesh uses");
    let names = ["exa", "exb", "exc", "exd"];
    let mut users = Vec::new();
    for name in names {
        users.push(source.user(name).await);
    }
    for (follower, followee) in [(0, 1), (0, 2), (1, 2), (3, 0)] {
        source.follow(&users[follower].1, &users[followee].0).await;
    }
    let mut tweets = Vec::new();
    for (i, (_, token)) in users.iter().enumerate() {
        for n in 0..3 {
            tweets.push(source.tweet(token, &format!("user {i}, tweet {n}")).await);
        }
    }
    let (status, _) = source
        .post(
            &format!("/v1/tweets/{}/like", tweets[4]),
            Some(&users[0].1),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Users 0, 1 and 2 tweeted three times each, and user 0 follows 1 and 2.
    eventually("the feed holds nine tweets", CONVERGE, || async {
        (source.feed_ids(&users[0].1).await.len() == 9).then_some(())
    })
    .await;
    let before = view(&source, &names).await;

    let prefix = source.keyspaces_prefix().expect("a CQL mesh").to_owned();
    let env = cql_env(&nodes, &prefix);
    let dir = tempfile::tempdir().unwrap();
    let (resumed, whole) = (dir.path().join("resumed"), dir.path().join("whole"));
    let resumed_arg = resumed.to_string_lossy().into_owned();
    let args = |to: &str, more: &[&str]| {
        let mut args = vec!["export", "--to", to, "--ranges", "8", "--page-size", "3"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };
    // Interrupted after a few ranges, then resumed.
    let first = args(&resumed_arg, &["--stop-after", "20"]);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    twtr(&first, &env).await;
    assert!(resumed.join("progress.json").exists());
    assert!(!resumed.join("manifest.json").exists(), "unfinished");
    let rest = args(&resumed_arg, &[]);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let said = twtr(&rest, &env).await;
    assert!(said.contains("going on with the export"), "{said}");
    assert!(resumed.join("manifest.json").exists());
    let whole_arg = whole.to_string_lossy().into_owned();
    let once = args(&whole_arg, &[]);
    let once: Vec<&str> = once.iter().map(String::as_str).collect();
    twtr(&once, &env).await;
    let files = exported(&resumed);
    assert_eq!(
        files,
        exported(&whole),
        "a resumed export writes what one run does"
    );
    assert!(
        files.keys().any(|f| f.starts_with("tweets/tweets/")),
        "{:?}",
        files.keys()
    );

    // A fresh keyspace set, migrated, then imported into.
    let target = fresh_keyspaces(&nodes).await;
    let target_env = cql_env(&nodes, &target.prefix);
    let (migrated, log) = run_migrate(&target_env).await;
    assert!(migrated, "{log}");
    twtr(&["import", "--from", &resumed_arg], &target_env).await;
    // Importing again changes nothing (plain idempotent inserts).
    twtr(&["import", "--from", &resumed_arg], &target_env).await;

    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = twtr::Config::embedded(data_dir.path());
    let mut cql = twtr_common::cql::CqlConfig::new(nodes.clone());
    cql.keyspace_prefix = target.prefix.clone();
    config.storage = twtr::Storage::Cql(cql);
    let imported = TestMesh::start_with(config, data_dir).await;
    eventually("the imported mesh answers", CONVERGE, || async {
        let (status, _) = imported.get("/v1/timeline", None).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let after = view(&imported, &names).await;
    assert_eq!(
        after, before,
        "the imported keyspaces serve what the source did"
    );
    imported.stop().await;
    drop(target);
    source.stop().await;
}
