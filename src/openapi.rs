//! The OpenAPI document's fixed parts (title, security schemes, the error body) and the
//! post-processing that adds to every operation the error responses the layers and
//! extractors can give. The routes themselves describe their own operations.

use utoipa::{
    Modify, OpenApi as DeriveOpenApi,
    openapi::{
        Content, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Type,
        header::Header,
        path::Operation,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

use crate::error::ErrorBody;

/// Name of the admin bearer token's security scheme (`security(("admin_token" = []))`).
pub const ADMIN_TOKEN_SCHEME: &str = "admin_token";
/// Name of the bearer data import key's security scheme (Amplitude's webhook).
pub const IMPORT_KEY_BEARER_SCHEME: &str = "import_key_bearer";
/// Name of the HTTP Basic data import key's security scheme (Mixpanel's webhook).
pub const IMPORT_KEY_BASIC_SCHEME: &str = "import_key_basic";
/// Name of the REST API key's security scheme (`security(("api_key" = []))`).
pub const API_KEY_SCHEME: &str = "api_key";

/// The document's fixed parts: title, security schemes, the error body.
#[derive(DeriveOpenApi)]
#[openapi(
    info(
        title = "cohort-ingest",
        description = "Partner cohort imports (Braze partner cohort-import contract), a user store, and segment filters. \
                       Every error is JSON `{\"message\": …}`; 503 and 429 carry `Retry-After`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The document's fixed parts, before the routes are merged in.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            ADMIN_TOKEN_SCHEME,
            bearer("ADMIN_TOKEN", "The operator's ADMIN_TOKEN, for everything under /admin."),
        );
        components.add_security_scheme(
            IMPORT_KEY_BEARER_SCHEME,
            bearer("dik_…", "The workspace's data import key for the partner in the path (Amplitude's webhook)."),
        );
        components.add_security_scheme(
            IMPORT_KEY_BASIC_SCHEME,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "HTTP Basic: the password is the workspace's data import key for the partner in the path; \
                         the user name is ignored (Mixpanel's webhook).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_SCHEME,
            bearer("rak_…", "A REST API key of the workspace (segment filter API), created under /admin."),
        );
    }
}

/// Adds to every operation the error responses the layers and extractors can give, when
/// its handler did not describe them itself: 500 and 503 everywhere; 400 with path or
/// query parameters; 400, 413 and 415 with a request body (not 415 on the partner endpoints, which read any body as JSON);
/// 401 with a security requirement; 401 and 429 on the partner endpoints and the
/// webhooks (data import keys, per-key rate limit).
pub fn add_common_error_responses(document: &mut OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    for (name, response) in [
        ("BadRequest", error_response("Malformed or invalid input; the message names the field", false)),
        ("Unauthorized", error_response("Missing or invalid credentials", false)),
        ("PayloadTooLarge", error_response("The body is over the size limit", false)),
        ("UnsupportedMediaType", error_response("The body is not of the expected content type", false)),
        ("TooManyRequests", error_response("Rate limit of the key exceeded; retry after Retry-After seconds", true)),
        ("InternalError", error_response("A bug; details are logged, never sent", false)),
        (
            "Unavailable",
            error_response(
                "At capacity, timed out, or the database is unavailable; retry after Retry-After seconds",
                true,
            ),
        ),
    ] {
        components.responses.entry(name.to_owned()).or_insert(RefOr::T(response));
    }
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
            &mut item.query,
        ];
        for operation in operations.into_iter().flatten().chain(item.additional_operations.values_mut()) {
            let mut expected = vec![("500", "InternalError"), ("503", "Unavailable")];
            // A path or query parameter that is not of its type (a malformed UUID, a
            // name with NUL) is a 400 (on the partner routes the 401 below).
            if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) && !path.starts_with("/partners/") {
                expected.push(("400", "BadRequest"));
            }
            if operation.request_body.is_some() {
                expected.extend([("400", "BadRequest"), ("413", "PayloadTooLarge")]);
                // The partner contract and the webhooks read their body as JSON whatever
                // the content type.
                if !path.starts_with("/partners/") && !path.starts_with("/webhooks/") {
                    expected.push(("415", "UnsupportedMediaType"));
                }
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                expected.push(("401", "Unauthorized"));
            }
            if path.starts_with("/partners/") || path.starts_with("/webhooks/") {
                expected.extend([("401", "Unauthorized"), ("429", "TooManyRequests")]);
            }
            add_responses(operation, &expected);
        }
    }
}

fn add_responses(operation: &mut Operation, expected: &[(&str, &str)]) {
    for (status, name) in expected {
        operation.responses.responses.entry((*status).to_owned()).or_insert(RefOr::Ref(Ref::from_response_name(*name)));
    }
}

fn error_response(description: &str, retry_after: bool) -> Response {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    if retry_after {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).build();
        response = response.header(
            "Retry-After",
            Header::builder().schema(Some(seconds)).description(Some("Seconds to wait before retrying")).build(),
        );
    }
    response.build()
}
