//! Authorization on the real binary, tokens given the way operators give them
//! (`DELTASPACE_SERVER_TOKENS`): writes without a valid bearer token are refused with 401 and
//! change nothing, and no token (right, wrong, or misplaced in a URL) ever appears in the log,
//! even at trace level, in `/metrics`, in `/v1/info` or in an error body. An open server bound to
//! a loopback address refuses what a web page elsewhere sends it (cross-site changes, DNS
//! rebinding).

use std::time::Duration;

use serde_json::{Value, json};

use super::process::{Server, Setup};

const RIGHT: &str = "tok-right-7f3a9c";
const SECOND: &str = "tok-second-91c2e4";
const WRONG: &str = "tok-wrong-55d1b8";

#[tokio::test]
async fn writes_need_a_valid_token_and_no_token_is_ever_logged_or_exported() {
    let setup = Setup::new().server("tokens", format!("{RIGHT},{SECOND}"));
    let mut server = Server::start(&setup, "trace").await;
    let http = reqwest::Client::new();
    let task = json!({"det": "lora", "z": [0.1, 0.2, 0.3, 0.4],
        "labels": [{"name": "a", "description": "A."}, {"name": "b", "description": "B."}]});
    let put = |authorization: Option<String>, path: &str| {
        let mut request = http.put(server.url(path)).json(&task);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let mut bodies = Vec::new();
    let refused = [
        (None, "/v1/tasks/guarded"),
        (Some(format!("Bearer {WRONG}")), "/v1/tasks/guarded"),
        (Some(format!("Bearer {RIGHT}x")), "/v1/tasks/guarded"),
        (Some(format!("Basic {RIGHT}")), "/v1/tasks/guarded"),
        (Some(RIGHT.to_string()), "/v1/tasks/guarded"),
        (Some("Bearer ".to_string()), "/v1/tasks/guarded"),
        (None, &format!("/v1/tasks/guarded?token={RIGHT}")),
        (None, &format!("/v1/tasks/{WRONG}")),
    ];
    for (authorization, path) in refused {
        let response = put(authorization.clone(), path).await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?} {path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        bodies.push(body.to_string());
    }
    let created = put(Some(format!("Bearer {SECOND}")), "/v1/tasks/guarded")
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for authorization in [None, Some(format!("Bearer {WRONG}"))] {
        let mut delete = http.delete(server.url("/v1/tasks/guarded"));
        if let Some(value) = authorization {
            delete = delete.header("authorization", value);
        }
        let response = delete.send().await.unwrap();
        assert_eq!(response.status(), 401);
        bodies.push(response.text().await.unwrap());
    }
    // Refused writes changed nothing; reads stay open (protect_reads = false).
    let stored: Value = http
        .get(server.url("/v1/tasks/guarded"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["generation"], 1);
    let predicted = http
        .post(server.url("/v1/tasks/guarded/predict"))
        .json(&json!({"inputs": ["open to all"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(predicted.status(), 200);

    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"deltaspace_task_uploads_total{result="unauthorized"} 8"#),
        "{metrics}"
    );
    let info = http
        .get(server.url("/v1/info"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        parsed["auth"],
        json!({"writes": true, "reads": false}),
        "{info}"
    );

    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(30)).await, Some(0));
    let log = server.log_text();
    assert!(
        log.contains("request"),
        "the access log is on at trace level:\n{log}"
    );
    for (what, text) in [
        ("the log", &log),
        ("/metrics", &metrics),
        ("/v1/info", &info),
    ]
    .into_iter()
    .chain(bodies.iter().map(|b| ("an error body", b)))
    {
        for token in [RIGHT, SECOND, WRONG] {
            assert!(!text.contains(token), "{what} shows a token:\n{text}");
        }
    }
}

/// A server bound to 127.0.0.1 with no tokens (the default) is open to this machine's clients,
/// not to web pages elsewhere: a change a browser sends from another site is refused (403
/// `cross_site`), and so is any request under a `Host` name that is not this machine's, as a page
/// that made its own name resolve to 127.0.0.1 would send it (403 `host_not_allowed`), unless
/// `allowed_hosts` lists the name. Clients that are not browsers (no Origin) are not affected.
#[tokio::test]
async fn an_open_loopback_server_refuses_other_sites_and_foreign_host_names() {
    let setup = Setup::new().server("allowed_hosts", "deltaspace.internal");
    let mut server = Server::start(&setup, "info").await;
    let http = reqwest::Client::new();
    let task = json!({"det": "lora", "z": [0.1, 0.2, 0.3, 0.4],
        "labels": [{"name": "a", "description": "A."}, {"name": "b", "description": "B."}]});
    let put = |headers: &[(&str, &str)]| {
        let mut request = http.put(server.url("/v1/tasks/site")).json(&task);
        for &(name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let refused: [(&[(&str, &str)], &str); 4] = [
        (&[("origin", "https://evil.example")], "cross_site"),
        (&[("sec-fetch-site", "cross-site")], "cross_site"),
        (&[("host", "evil.example")], "host_not_allowed"),
        (
            &[("host", "evil.example"), ("origin", "http://evil.example")],
            "host_not_allowed",
        ),
    ];
    for (headers, code) in refused {
        let response = put(headers).await.unwrap();
        assert_eq!(response.status(), 403, "{headers:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{headers:?}");
    }
    let foreign_read = http
        .get(server.url("/v1/tasks"))
        .header("host", "rebound.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_read.status(), 403);
    let message: Value = foreign_read.json().await.unwrap();
    assert!(
        message["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowed_hosts"),
        "{message}"
    );
    // Nothing was stored by the refused writes.
    let missing = http.get(server.url("/v1/tasks/site")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The page's own requests (same origin), a listed name, and plain clients go through.
    let same_origin = server.url("");
    let allowed: [&[(&str, &str)]; 3] = [
        &[("origin", &same_origin), ("sec-fetch-site", "same-origin")],
        &[("host", "deltaspace.internal")],
        &[],
    ];
    for headers in allowed {
        let response = put(headers).await.unwrap();
        assert!(response.status().is_success(), "{headers:?}");
    }
    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(30)).await, Some(0));
}
