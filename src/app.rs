//! The one place that wires things: shared state, routes and tower layers.

use std::sync::Arc;

use axum::{
    Json, Router,
    error_handling::HandleErrorLayer,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    response::IntoResponse,
    routing::get,
};
use sqlx::PgPool;
use tower::{BoxError, ServiceBuilder};
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi;

use crate::{auth::KeyUsage, config::Config, error::ApiError, http};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The PostgreSQL pool.
    pub pool: PgPool,
    /// The settings the service was started with.
    pub config: Arc<Config>,
    /// When keys' `last_used_at` was last written.
    pub key_usage: Arc<KeyUsage>,
}

impl AppState {
    /// State for a pool and configuration.
    pub fn new(pool: PgPool, config: Config) -> Self {
        AppState { pool, config: Arc::new(config), key_usage: Arc::default() }
    }
}

/// The OpenAPI document of every route, as collected from the handlers.
pub fn openapi() -> OpenApi {
    http::routes().split_for_parts().1
}

/// The complete service: routes, the OpenAPI document, and the layers around them.
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = http::routes().split_for_parts();
    let openapi = Arc::new(openapi);
    let config = state.config.clone();

    routes
        .route("/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .fallback(no_such_route)
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(middleware_error))
                .load_shed()
                .concurrency_limit(config.max_in_flight)
                .timeout(config.request_timeout()),
        )
}

async fn no_such_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Turns the failures of the load-shedding and timeout layers into JSON 503s.
async fn middleware_error(error: BoxError) -> impl IntoResponse {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Overloaded("request timed out, retry later".into()).into_response()
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded("server is at capacity, retry later".into()).into_response()
    } else {
        ApiError::Internal(anyhow::anyhow!("middleware error: {error}")).into_response()
    }
}
