//! One thread pool for every session (`[runtime] shared_threads`), on the real binary: the pool
//! belongs to the process, so only a server process of its own shows it. With it and the
//! one-DET graphs on, a server answers what a server with the defaults answers.

use serde_json::{Value, json};

use super::process::{Server, Setup};

#[tokio::test]
async fn a_server_on_one_shared_thread_pool_answers_as_one_with_pools_per_session() {
    // Pools per session first (later settings of the same key win).
    let mut setup = Setup::new().runtime("shared_threads", false);
    let http = reqwest::Client::new();
    let tasks = [
        ("low", "lora", [0.3, -0.2, 0.5, 0.1]),
        ("mid", "adapter", [-0.4, 0.1, 0.2, 0.6]),
        ("top", "prefix", [0.2, 0.7, -0.3, -0.1]),
    ];
    let texts = json!({"inputs": ["a warm day", "snow on the hills tonight, and a cold wind"]});
    let mut answers: Vec<Vec<Value>> = Vec::new();
    for shared in [false, true] {
        if shared {
            setup = setup
                .runtime("shared_threads", true)
                .runtime("one_det_graphs", true);
        }
        let server = Server::start(&setup, "info").await;
        let info: Value = http
            .get(server.url("/v1/info"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["shared_threads"], shared, "{info}");
        let mut got = Vec::new();
        for (name, det, z) in tasks {
            let task = json!({"det": det, "z": z, "labels": [
                {"name": "warm", "description": "Warm weather."},
                {"name": "cold", "description": "Cold weather."}]});
            let put = http
                .put(server.url(&format!("/v1/tasks/{name}")))
                .json(&task)
                .send();
            assert!(put.await.unwrap().status().is_success());
            let url = server.url(&format!("/v1/tasks/{name}/predict"));
            let answer = http.post(url).json(&texts).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            got.push(answer.json().await.unwrap());
        }
        answers.push(got);
        server.kill();
    }
    for (own_pools, shared) in answers[0].iter().zip(&answers[1]) {
        let pairs = own_pools["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(shared["predictions"].as_array().unwrap());
        for (a, b) in pairs {
            for (x, y) in a["scores"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["scores"].as_array().unwrap())
            {
                assert_eq!(x["label"], y["label"]);
                let gap = (x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs();
                assert!(gap < 1e-4, "{x} vs {y}");
            }
        }
    }
}
