use crate::helpers::{TestApp, expect_json};

#[tokio::test]
async fn healthz_and_readyz_answer_200_without_auth() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let app = TestApp::spawn().await;
    let body = expect_json(app.client.get(app.url("/nope")).send().await.unwrap(), 404).await;
    assert_eq!(body["message"], "no route for GET /nope");
}
