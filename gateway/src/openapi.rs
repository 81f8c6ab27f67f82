//! The OpenAPI 3 document (`/openapi.json`) and the interactive docs page (`/docs`).
//!
//! The document is generated from the code (utoipa): each handler in [`crate::routes`] carries
//! its `#[utoipa::path]` and is registered with `routes!`, which takes the route's path and
//! method from that same annotation, so the document lists exactly the routes served. The
//! bodies' schemas come from the Rust types themselves. A handler's annotation states what is
//! its own (its success, its 404 or 409, a 400 or 401 that says more); [`EdgeResponses`] then
//! adds, once for all routes, what the gateway answers whatever the route (401 for a bad token,
//! 400 for a bad ID, page query or body, rate limits, overload, deadlines, body size) and the
//! bearer security scheme. `gateway/tests/openapi_operations.txt` states every operation
//! (method, path, id, tags, security, parameters, body, statuses); a unit test holds the
//! document to it, so a change of the public contract is a change of that file.
//!
//! `/docs` is Swagger UI, its files compiled into the binary (vendored from the npm package
//! `swagger-ui-dist`, see `gateway/assets/swagger-ui/VERSION`), so it works offline.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response as OpenApiResponse, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, Type};
use utoipa::{IntoParams, Modify, ToSchema};
use utoipa_axum::router::OpenApiRouter;

/// The document's frame: title, version, tags, components; routes are added by the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "twtr",
        description = "A Twitter-like API. IDs are decimal strings, timestamps RFC 3339 UTC. \
            Lists are pages (`items`, `next`): pass `next` as `before` for older items, or \
            `since=<id>` for newer ones. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "users", description = "Sign-up, login, profiles"),
        (name = "follows", description = "The follow graph"),
        (name = "tweets", description = "Tweets, likes, retweets, timelines"),
        (name = "feed", description = "The caller's home feed"),
        (name = "notifications", description = "Mentions, new followers, likes and retweets of the caller's tweets"),
        (name = "discovery", description = "Hashtags, tweet and people search, trends")
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The JSON error body of every failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_argument`, `unauthenticated`, `permission_denied`,
    /// `not_found`, `already_exists`, `request_timeout`, `payload_too_large`, `uri_too_long`,
    /// `rate_limited`, `unavailable`, `deadline_exceeded`, `internal`, `method_not_allowed`.
    #[schema(example = "not_found")]
    pub code: String,
    /// For people.
    #[schema(example = "tweet not found")]
    pub message: String,
}

/// `?limit=&before=&since=` of every list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation only: `extract::PageParams` parses them
pub struct PageQuery {
    /// Items per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Older than this cursor: the `next` of the previous page.
    #[param(pattern = "^[0-9]+$", example = "7129876543210123")]
    before: Option<String>,
    /// Newer than this ID (polling for new items).
    #[param(pattern = "^[0-9]+$")]
    since: Option<String>,
}

/// The header that makes a post safe to retry.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: the handler reads it
pub struct IdempotencyKeyHeader {
    /// Makes a retried post return the first one (1 to 255 visible ASCII characters).
    #[param(rename = "Idempotency-Key", example = "post-2026-11-23-0001")]
    idempotency_key: Option<String>,
}

/// A user's ID in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the handlers parse it
pub struct UserIdPath {
    /// The user's ID (decimal).
    #[param(pattern = "^[0-9]+$", example = "7129876543210123")]
    id: String,
}

/// A tweet's ID in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the handlers parse it
pub struct TweetIdPath {
    /// The tweet's ID (decimal).
    #[param(pattern = "^[0-9]+$", example = "7129876543210456")]
    id: String,
}

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// Adds the bearer scheme, and to every API operation what the gateway may answer whatever the
/// route: 401 where a token is accepted, 400 where an ID, a page query or a body is parsed
/// (see `bad_request`), 429 (rate limits), 500, 503 (overload, a service down), 504
/// (deadline), 414 (a path and query over the edge's limit), and 408 (the body did not arrive by
/// the deadline) and 413 where there is a body. A route that documents one of these statuses
/// itself, to say more (a wrong password, a field's rules), keeps its own. Applied to the
/// document once the router has added the routes.
pub struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ];
            for operation in operations.into_iter().flatten() {
                add_edge_responses(operation);
            }
        }
    }
}

fn error_response(description: &str, retry_after: bool) -> OpenApiResponse {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

/// The 401 of an operation that accepts a bearer token (the extractor's answer to a missing,
/// malformed, expired or revoked one); `None` for an operation without one.
fn unauthorized(operation: &Operation) -> Option<&'static str> {
    let requirements = operation.security.as_deref().unwrap_or_default();
    let bearer = SecurityRequirement::new(BEARER, Vec::<String>::new());
    if !requirements.contains(&bearer) {
        return None;
    }
    if requirements.contains(&SecurityRequirement::default()) {
        // Anonymous callers are welcome; a token that is sent must still be valid.
        Some("an invalid token")
    } else {
        Some("no valid token")
    }
}

/// The 400 of an operation by what of its input the gateway parses before any service sees it:
/// an ID in its path (`id`, of [`UserIdPath`] and [`TweetIdPath`]), a page query (`limit` and
/// the rest of [`PageQuery`]), a JSON body. `None` for an operation that takes none of them.
fn bad_request(operation: &Operation) -> Option<&'static str> {
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let takes = |place: ParameterIn, name: &str| {
        parameters
            .iter()
            .any(|parameter| parameter.parameter_in == place && parameter.name == name)
    };
    let id = takes(ParameterIn::Path, "id");
    let page = takes(ParameterIn::Query, "limit");
    match (id, page, operation.request_body.is_some()) {
        (true, true, _) => Some("a bad ID or page parameter"),
        (true, false, _) => Some("the ID is not a decimal ID"),
        (false, true, _) => Some("a bad page parameter"),
        (false, false, true) => Some("malformed body"),
        (false, false, false) => None,
    }
}

fn add_edge_responses(operation: &mut Operation) {
    let unauthorized = unauthorized(operation);
    let bad_request = bad_request(operation);
    let mut add = |status: &str, response: OpenApiResponse| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| response.into());
    };
    if let Some(description) = bad_request {
        add("400", error_response(description, false));
    }
    if let Some(description) = unauthorized {
        add("401", error_response(description, false));
    }
    add(
        "429",
        error_response("too many requests (a rate limit)", true),
    );
    add(
        "500",
        error_response("an unexpected failure (details are logged)", false),
    );
    add(
        "503",
        error_response(
            "overloaded, or a backend service is down; retry later",
            true,
        ),
    );
    add(
        "504",
        error_response("the request's deadline passed", false),
    );
    add(
        "414",
        error_response("the path and query are over the length limit", false),
    );
    if operation.request_body.is_some() {
        add(
            "408",
            error_response("the body did not arrive before the deadline", false),
        );
        add(
            "413",
            error_response("the body is over the size limit", false),
        );
    }
}

/// The router and its finished document: the routes' own operations, then [`EdgeResponses`].
pub fn split<S: Clone + Send + Sync + 'static>(api: OpenApiRouter<S>) -> (Router<S>, OpenApi) {
    let (router, mut document) = api.split_for_parts();
    EdgeResponses.modify(&mut document);
    (router, document)
}

/// The document, as served at `/openapi.json` (built once).
pub fn json(document: &OpenApi) -> Response {
    match document.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot render the OpenAPI document");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

const SWAGGER_UI_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

/// `/docs`: Swagger UI on `/openapi.json`, every asset from this server.
pub async fn docs_page() -> Html<&'static str> {
    Html(
        r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>twtr API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
  </script>
</body>
</html>
"##,
    )
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn swagger_ui_js() -> Response {
    asset("text/javascript; charset=utf-8", SWAGGER_UI_JS)
}

pub async fn swagger_ui_css() -> Response {
    asset("text/css; charset=utf-8", SWAGGER_UI_CSS)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The document's operations in the form of `tests/openapi_operations.txt`: one line each,
    /// sorted by path then method.
    fn outline(document: &OpenApi) -> String {
        let document = serde_json::to_value(document).unwrap();
        let mut lines = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let line = operation_line(path, method, operation);
                lines.push(((path.clone(), method.clone()), line));
            }
        }
        lines.sort();
        lines.into_iter().map(|(_, line)| line + "\n").collect()
    }

    fn operation_line(path: &str, method: &str, operation: &Value) -> String {
        let array = |key: &str| operation[key].as_array().cloned().unwrap_or_default();
        let text = |value: &Value| value.as_str().unwrap().to_owned();
        let tags = array("tags").iter().map(text).collect();
        // Each requirement names the schemes it needs; an empty one lets in anonymous callers.
        let security = operation["security"].as_array().map(|requirements| {
            let requirements = requirements.iter().map(|requirement| {
                let mut schemes: Vec<_> =
                    requirement.as_object().unwrap().keys().cloned().collect();
                schemes.sort();
                if schemes.is_empty() {
                    "none".to_owned()
                } else {
                    schemes.join("+")
                }
            });
            list(requirements.collect())
        });
        let params = array("parameters")
            .iter()
            .map(|param| format!("{}:{}", text(&param["in"]), text(&param["name"])))
            .collect();
        let mut statuses: Vec<_> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        statuses.sort();
        let body = if operation.get("requestBody").is_some() {
            "yes"
        } else {
            "-"
        };
        format!(
            "{} {path} id={} tags={} security={} params={} body={body} responses={}",
            method.to_uppercase(),
            operation["operationId"].as_str().unwrap_or("-"),
            list(tags),
            security.unwrap_or_else(|| "-".to_owned()),
            list(params),
            statuses.join(","),
        )
    }

    /// `a,b,c`, or `-` for none.
    fn list(items: Vec<String>) -> String {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    }

    #[test]
    fn the_document_states_the_contract() {
        let (_, document) = split(crate::routes::api());
        let expected: String = include_str!("../tests/openapi_operations.txt")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        let actual = outline(&document);
        assert!(
            actual == expected,
            "the documented operations changed; the document now says:\n{actual}"
        );
    }

    /// What the shared 400 and 401 say where a route does not say more, and that a route that
    /// does keeps its own words.
    #[test]
    fn shared_responses_give_way_to_a_routes_own() {
        let (_, document) = split(crate::routes::api());
        let document = serde_json::to_value(&document).unwrap();
        let cases = [
            ("get /v1/feed 401", "no valid token"),
            ("get /v1/timeline 401", "an invalid token"),
            (
                "patch /v1/users/me 401",
                "no valid token, or a wrong current password",
            ),
            ("post /v1/sessions 401", "wrong username or password"),
            ("post /v1/users 401", "(none)"),
            ("get /v1/users/{id} 400", "the ID is not a decimal ID"),
            (
                "get /v1/users/{id}/tweets 400",
                "a bad ID or page parameter",
            ),
            ("get /v1/feed 400", "a bad page parameter"),
            ("post /v1/sessions 400", "malformed body"),
            (
                "post /v1/users/{id}/follow 400",
                "the ID is not a decimal ID, or is the caller's",
            ),
            ("get /v1/users/by-username/{username} 400", "(none)"),
            ("get /v1/users/me 400", "(none)"),
        ];
        for (case, expected) in cases {
            let [method, path, status]: [&str; 3] =
                case.split(' ').collect::<Vec<_>>().try_into().unwrap();
            let response = &document["paths"][path][method]["responses"][status];
            let actual = response["description"].as_str().unwrap_or("(none)");
            assert_eq!(actual, expected, "{case}");
        }
    }
}
