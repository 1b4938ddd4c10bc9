//! The one place that wires things: routes, the OpenAPI document, the
//! operational endpoints and the tower layers.

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{Method, Uri, header},
    middleware,
    response::IntoResponse,
};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    config::Config,
    error::ApiError,
    http, metrics,
    middleware::limits::{self, Limits},
    state::AppState,
    store::database::Database,
    telemetry,
};

/// The schemes' names, where the document's users look for them beside [`openapi`].
pub use crate::openapi::{ADMIN_TOKEN_SCHEME, API_KEY_SCHEME, IMPORT_KEY_BASIC_SCHEME, IMPORT_KEY_BEARER_SCHEME};

/// Every route with its OpenAPI description: the resource handlers plus the two
/// operational endpoints defined here. Everything is mounted with `routes!`, which is
/// what puts a route in the document.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .merge(http::routes())
        .routes(routes!(openapi_json))
        .routes(routes!(prometheus_metrics))
}

/// The OpenAPI document of every route, as collected from the handlers, with the error
/// responses every operation can give.
pub fn openapi() -> OpenApi {
    routes_and_document().1
}

fn routes_and_document() -> (Router<AppState>, OpenApi) {
    let (routes, mut document) = documented_routes().split_for_parts();
    crate::openapi::add_common_error_responses(&mut document);
    (routes, document)
}

/// The serialized document, served by `/openapi.json`.
#[derive(Clone)]
struct OpenApiJson(Bytes);

/// The complete service: routes, the OpenAPI document, and the layers around them.
pub fn router(state: AppState) -> Router {
    // Before the first request: what is recorded without a recorder is lost.
    metrics::prometheus();
    let (routes, document) = routes_and_document();
    let document = OpenApiJson(serde_json::to_vec(&document).expect("the OpenAPI document serializes").into());
    let config = state.config.clone();
    let routes = routes
        .fallback(no_such_route)
        // After every route: it applies to the method routers that exist when called.
        .method_not_allowed_fallback(limits::method_not_allowed)
        .layer(Extension(document))
        .with_state(state);
    with_layers(routes, &config)
}

/// The layers every route runs in, innermost first. `Router::layer` wraps each route
/// (and the fallbacks) after routing, so the matched route template is known to them.
/// - a panic becomes a JSON 500 (and is counted and logged as one by the layers outside);
/// - the body limit that `Json` extractors enforce (413; a route may set its own);
/// - load shedding and the request deadline (503 + `Retry-After`);
/// - the request span, request id and HTTP metrics, outermost so they see every answer.
pub fn with_layers(routes: Router, config: &Config) -> Router {
    let limits = Limits::new(config.max_in_flight, config.request_timeout(), config.body_limit_bytes);
    routes
        .layer(CatchPanicLayer::custom(limits::panic_response))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(limits, limits::enforce_limits))
        .layer(middleware::from_fn(telemetry::observe_request))
}

async fn no_such_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document of this service", content_type = "application/json")))]
async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}

/// Prometheus metrics: requests by route template and status with latency histograms,
/// identifiers imported by partner and outcome, and the database pool (sampled now).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain")))]
async fn prometheus_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(pool_sample(&state.db)))
}

/// The pool's numbers now, for the metrics' pool gauges.
fn pool_sample(db: &Database) -> metrics::PoolSample {
    let pool = db.stats();
    metrics::PoolSample { size: pool.size, idle: pool.idle, max: pool.max, waiting: pool.waiting }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use axum::{
        body::Body,
        http::{HeaderMap, Request, StatusCode},
        routing::{get, post},
    };
    use tower::ServiceExt;

    use super::*;
    use crate::telemetry::REQUEST_ID;

    fn config(timeout_secs: u64, max_in_flight: usize) -> Config {
        let mut config = Config::defaults();
        config.request_timeout_secs = timeout_secs;
        config.max_in_flight = max_in_flight;
        config
    }

    async fn call(router: &Router, method: Method, path: &str) -> axum::response::Response {
        router.clone().oneshot(Request::builder().method(method).uri(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body_json(response: axum::response::Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_bare_json_500() {
        async fn boom() -> &'static str {
            panic!("secret dik_0123456789 leaked into a panic")
        }
        let router = with_layers(Router::new().route("/boom", get(boom)), &config(30, 8));
        let response = call(&router, Method::GET, "/boom").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(&REQUEST_ID));
        assert_eq!(body_json(response).await, serde_json::json!({"message": "internal error"}));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_answers_503_with_retry_after_unless_its_route_streams() {
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "done"
        }
        let router = with_layers(
            Router::new().route("/slow", get(slow)).route("/v1/segments/export", post(slow)),
            &config(1, 8),
        );
        let response = call(&router, Method::GET, "/slow").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body_json(response).await["message"], "request timed out, retry later");
        // The streamed export is exempt from the deadline.
        assert_eq!(call(&router, Method::POST, "/v1/segments/export").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_over_max_in_flight_are_shed_but_probes_are_not() {
        let release = Arc::new(tokio::sync::Notify::new());
        let waiting = release.clone();
        let router = with_layers(
            Router::new()
                .route(
                    "/wait",
                    get(move || async move {
                        waiting.notified().await;
                        "done"
                    }),
                )
                .route("/healthz", get(|| async { "ok" })),
            &config(30, 1),
        );
        let first = tokio::spawn({
            let router = router.clone();
            async move { call(&router, Method::GET, "/wait").await }
        });
        // Let the first request take the only slot.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = call(&router, Method::GET, "/wait").await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body_json(shed).await["message"], "server is at capacity, retry later");
        assert_eq!(call(&router, Method::GET, "/healthz").await.status(), StatusCode::OK);
        release.notify_one();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        // The slot is free again.
        let again = tokio::spawn({
            let router = router.clone();
            async move { call(&router, Method::GET, "/wait").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.notify_one();
        assert_eq!(again.await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_streamed_response_holds_its_in_flight_slot_until_its_body_ends() {
        let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let receive = Arc::new(std::sync::Mutex::new(Some(receive)));
        let export = move || {
            let receive = receive.lock().unwrap().take().unwrap();
            async move {
                let chunks = futures::stream::unfold(receive, |mut r| async { r.recv().await.map(|c| (c, r)) });
                Body::from_stream(chunks)
            }
        };
        let router = with_layers(
            Router::new().route("/v1/segments/export", post(export)).route("/other", get(|| async { "ok" })),
            &config(30, 1),
        );
        let streaming = call(&router, Method::POST, "/v1/segments/export").await;
        assert_eq!(streaming.status(), StatusCode::OK);
        assert_eq!(call(&router, Method::GET, "/other").await.status(), StatusCode::SERVICE_UNAVAILABLE);
        send.send(Ok(Bytes::from_static(b"line\n"))).await.unwrap();
        drop(send);
        assert_eq!(axum::body::to_bytes(streaming.into_body(), 100).await.unwrap(), "line\n");
        assert_eq!(call(&router, Method::GET, "/other").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn handlers_see_the_request_id_that_is_echoed() {
        async fn echo(headers: HeaderMap) -> String {
            headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
        }
        let router = with_layers(Router::new().route("/echo", get(echo)), &config(30, 8));

        let given = Request::builder().uri("/echo").header(REQUEST_ID, "req-42").body(Body::empty()).unwrap();
        let response = router.clone().oneshot(given).await.unwrap();
        assert_eq!(response.headers()[&REQUEST_ID], "req-42");
        assert_eq!(axum::body::to_bytes(response.into_body(), 100).await.unwrap(), "req-42");

        // Absent or unreasonable ids are replaced by a generated UUID, seen by both sides.
        for given in [None, Some("has spaces"), Some(&*"x".repeat(500))] {
            let mut request = Request::builder().uri("/echo");
            if let Some(id) = given {
                request = request.header(REQUEST_ID, id);
            }
            let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
            let echoed = response.headers()[&REQUEST_ID].to_str().unwrap().to_owned();
            assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
            assert_eq!(axum::body::to_bytes(response.into_body(), 100).await.unwrap(), echoed);
        }
    }
}
