//! Zato services run unchanged: the corpus in `tests/zato_corpus/` (services written as Zato
//! 3.2's documentation writes them, importing only `zato.*`) deployed to a real server and
//! called over HTTP, answers checked against what Zato documents; and the integration
//! patterns (invoke/retry, fan-out, parallel) run through the server's invoke.

use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

fn corpus(env: Env) -> Env {
    env.service(
        "sio_example.py",
        include_str!("zato_corpus/sio_example.py"),
    )
    .service("customer.py", include_str!("zato_corpus/customer.py"))
    .service("model_example.py", include_str!("zato_corpus/model_example.py"))
    .service("invoking.py", include_str!("zato_corpus/invoking.py"))
    .service(
        "patterns_example.py",
        include_str!("zato_corpus/patterns_example.py"),
    )
    .channel("/sio", &["POST"], "sio-example.my-service")
    .channel("/sio-required", &["POST"], "sio-example.my-service-required")
    .channel(
        "/crm/customer/{customer_id}",
        &["GET", "DELETE"],
        "crm.customer.get",
    )
    .channel_toml(
        "url_path = \"/crm/customer-body/{customer_id}\"\nmethods = [\"GET\"]\nservice = \"crm.customer.get\"\nparams_priority = \"msg-over-channel-params\"",
    )
    .channel("/crm/customers", &["POST"], "crm.customer.list")
    .channel("/crm/customer", &["POST"], "crm.customer.create")
    .channel("/client", &["POST"], "model-example.get-client")
    .channel("/phones/{client_id}", &["GET"], "model-example.get-phone-details")
    .channel("/order", &["POST"], "model-example.create-order")
    .channel("/summary", &["GET"], "billing.summary.get")
    .channel("/settings", &["GET"], "settings.get")
    .channel("/patterns/retry", &["POST"], "patterns.retry-blocking")
    .channel("/patterns/fallback", &["POST"], "patterns.retry-fallback")
    .channel("/patterns/fanout", &["POST"], "patterns.fanout")
    .channel("/patterns/parallel", &["POST"], "patterns.parallel")
    .channel("/patterns/record", &["POST"], "patterns.get-record")
}

#[tokio::test]
async fn the_corpus_deploys_unchanged_and_answers_as_zato_documents() {
    let srv = corpus(Env::new().workers(2)).start().await;

    // SimpleIO, plain form: the payload object, attribute assignment.
    let r = srv
        .post_json("/sio", &json!({"name": "Wendy", "type": "AXC"}))
        .await;
    // Zato 3.2's default response_elem: the payload object's answer under "response".
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"response": {"is_allowed": true}}))
    );
    let r = srv
        .post_json("/sio", &json!({"name": "Bob", "type": "AXC", "x": 1}))
        .await;
    assert_eq!(r.json(), json!({"response": {"is_allowed": false}}));
    // A required element missing: a 400 naming it.
    let r = srv.post_json("/sio", &json!({"name": "Wendy"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "type");

    // input_required / input_optional: an absent optional element reads as '' (Zato).
    let r = srv
        .post_json("/sio-required", &json!({"name": "wendy", "type": "x"}))
        .await;
    assert_eq!(
        r.json(),
        json!({"response": {"is_allowed": true, "comment": "none given"}})
    );

    // Typed elements from the path and the query; defaults; Date written out as ISO.
    let r = srv.get("/crm/customer/1?needs_details=true").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"response": {"name": "Jane Doe", "segment": "RNZ", "since": "2019-04-01", "page_size": 10,
               "is_raw": ""}})
    );
    let r = srv.get("/crm/customer/2?page_size=5&is_raw=yes").await;
    assert_eq!(
        r.json(),
        json!({"response": {"name": "John Doe", "page_size": 5, "is_raw": "yes"}})
    );
    // Zato's exceptions: BadRequest and NotFound with the service's message.
    let r = srv.get("/crm/customer/0").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Invalid customer_id `0`");
    let r = srv.get("/crm/customer/9").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "No such customer `9`");
    // Every bad element in one answer.
    let r = srv
        .get("/crm/customer/x?needs_details=perhaps&page_size=big")
        .await;
    assert_eq!(r.status, 400);
    let fields = error_fields(&r.json());
    assert_eq!(
        fields,
        vec![
            json!("customer_id"),
            json!("needs_details"),
            json!("page_size")
        ]
    );
    // Per-verb handlers.
    let r = srv.request("DELETE", "/crm/customer/1", &[], b"").await;
    assert_eq!(r.status, 204);
    // Path parameters win over the body by default (Zato's default for its channels)...
    let r = srv
        .request(
            "GET",
            "/crm/customer/1",
            &[("content-type", "application/json")],
            br#"{"customer_id": 2}"#,
        )
        .await;
    assert_eq!(r.json()["response"]["name"], "Jane Doe");
    // ...unless the channel says msg-over-channel-params.
    let r = srv
        .request(
            "GET",
            "/crm/customer-body/1",
            &[("content-type", "application/json")],
            br#"{"customer_id": 2}"#,
        )
        .await;
    assert_eq!(r.json()["response"]["name"], "John Doe");

    // output_repeated: a list, each item filtered and typed.
    let r = srv
        .post_json("/crm/customers", &json!({"ids": ["2", 1]}))
        .await;
    assert_eq!(
        r.json(),
        json!({"response": [{"id": 2, "name": "John Doe"}, {"id": 1, "name": "Jane Doe"}]})
    );
    let r = srv.post_json("/crm/customers", &json!({"ids": 2})).await;
    assert_eq!(
        r.json(),
        json!({"response": [{"id": 2, "name": "John Doe"}]})
    );

    // Status, headers, request.http.
    let r = srv
        .post_json("/crm/customer", &json!({"name": "Ann"}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json(), json!({"response": {"id": 3, "name": "Ann"}}));
    assert_eq!(r.header("location").as_deref(), Some("/crm/customer/3"));
    assert_eq!(r.header("x-method").as_deref(), Some("POST"));

    // Models: the documented GetClient.
    let r = srv.post_json("/client", &json!({"client_id": 5})).await;
    assert_eq!(
        r.json(),
        json!({"name": "Jane Doe", "email": "hello@example.com", "segment": "RNZ"})
    );
    let r = srv
        .post_json("/client", &json!({"client_id": "five"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "client_id");
    // Nested models in a list; the path parameter typed by the model; optional field.
    let r = srv.get("/phones/7?region=EU").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"phone_list": [
            {"imei": "123", "owner_id": 7, "owner_name": "John Doe"},
            {"imei": "789", "owner_id": 7, "owner_name": "Jane Doe"}],
            "response_type": "RZHEU"})
    );
    let r = srv.get("/phones/7").await;
    assert_eq!(r.json()["response_type"], "RZH");
    // A 400 naming every bad field of a nested input, by its path.
    let r = srv
        .post_json(
            "/order",
            &json!({"order_id": "x", "phones": [{"imei": "1", "owner_id": 1, "owner_name": "a"},
                                                {"imei": 2, "owner_name": "b"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let fields = error_fields(&r.json());
    assert_eq!(
        fields,
        vec![
            json!("order_id"),
            json!("phones[1].imei"),
            json!("phones[1].owner_id")
        ]
    );
    let r = srv
        .post_json(
            "/order",
            &json!({"order_id": 1, "phones": [{"imei": "1", "owner_id": 1, "owner_name": "a"}]}),
        )
        .await;
    assert_eq!(r.json(), json!({"order_id": 1, "imeis": ["1"], "note": ""}));

    // Invoking: as_bunch, a class with keyword arguments, environ across the hooks.
    let r = srv.get("/summary").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"first_balance": 100, "first_currency": "PLN", "second_balance": 200,
               "started": true})
    );
    assert_eq!(
        r.header("x-environ-keys").as_deref(),
        Some("currency,started")
    );

    // user_config: settings kept in the config store, read as Zato reads user-conf files.
    let file = std::env::temp_dir().join(format!("oxbus-crm-{}.json", next_id()));
    std::fs::write(&file, r#"{"api": {"timeout": 5, "region": "eu"}}"#).unwrap();
    let out = srv.cli(&[
        "user-config",
        "set",
        "crm",
        "--file",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{out:?}");
    let r = srv.get("/settings").await;
    assert_eq!(
        r.json(),
        json!({"timeout": 5, "region": "eu", "missing": null})
    );

    // OpenAPI describes the typed elements and the models.
    let r = srv.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    let get = &doc["paths"]["/crm/customer/{customer_id}"]["get"];
    let out = &get["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        out["properties"]["since"],
        json!({"type": "string", "format": "date"}),
        "{get}"
    );
    assert_eq!(out["required"], json!(["name"]));
    assert_eq!(get["parameters"][0]["schema"], json!({"type": "integer"}));
    let post = &doc["paths"]["/client"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["properties"]["client_id"],
        json!({"type": "integer"}),
        "{post}"
    );
    let phones = &doc["paths"]["/phones/{client_id}"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_eq!(phones["properties"]["phone_list"], json!({"type": "array"}));
    srv.assert_no_errors(&[
        "failed",
        "Retry",
        "retry",
        "fails on purpose",
        "always fails",
    ]);
}

/// The `field` of each entry of a 400's `errors`, in order.
fn error_fields(doc: &Value) -> Vec<Value> {
    doc["errors"]
        .as_array()
        .expect("a 400 lists its errors")
        .iter()
        .map(|e| e["field"].clone())
        .collect()
}

async fn record(srv: &Server, key: &str) -> Value {
    srv.post_json("/patterns/record", &json!({"key": key}))
        .await
        .json()["value"]
        .clone()
}

#[tokio::test]
async fn patterns_retry_fan_out_and_parallel() {
    let srv = corpus(Env::new().workers(2)).start().await;
    let tag = format!("t{}", next_id());

    // Blocking retry: two failures, repeats=3 -> the third call answers.
    let key = format!("{tag}-a");
    let r = srv
        .post_json(
            "/patterns/retry",
            &json!({"key": key, "fail": 2, "repeats": 3}),
        )
        .await;
    assert_eq!(r.json(), json!({"ok": true, "result": {"calls": 3}}));
    // Every attempt fails: 1 + repeats calls, then RetryLimitReached.
    let key = format!("{tag}-b");
    let r = srv
        .post_json(
            "/patterns/retry",
            &json!({"key": key, "fail": 100, "repeats": 2}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"ok": false, "error": "RetryLimitReached", "calls": 3})
    );

    // Async fallback: the first call fails in the service, the retries go on in the
    // background and the callback gets Zato's dict.
    let key = format!("{tag}-c");
    let r = srv
        .post_json(
            "/patterns/fallback",
            &json!({"key": key, "fail": 2, "repeats": 3}),
        )
        .await;
    let cid = r.json()["cid"].as_str().unwrap().to_owned();
    let got = eventually(Duration::from_secs(10), "the retry callback", || async {
        let v = record(&srv, &format!("record:retry:{key}")).await;
        (!v.is_null()).then_some(v)
    })
    .await;
    assert_eq!(got["ok"], true);
    assert_eq!(got["call_cid"], cid);
    assert_eq!(got["target"], "patterns.flaky");
    assert_eq!(got["source"], "patterns.retry-fallback");
    assert_eq!(got["response"], json!({"calls": 3}));
    assert_eq!(got["retry_repeats"], 3);

    // Fan-out: three targets that sleep 0.3 s and one that fails; on-target for each,
    // on-final with all four results.
    let r = srv.post_json("/patterns/fanout", &json!({"n": 3})).await;
    let cid = r.json()["cid"].as_str().unwrap().to_owned();
    let fin = eventually(
        Duration::from_secs(10),
        "the fan-out's on-final",
        || async {
            let v = record(&srv, &format!("record:on-final:{cid}")).await;
            (!v.is_null()).then_some(v)
        },
    )
    .await;
    assert_eq!(fin["phase"], "on-final");
    assert_eq!(fin["source"], "patterns.fanout");
    let data = fin["data"].as_array().unwrap();
    assert_eq!(data.len(), 4, "{fin}");
    let mut targets: Vec<&str> = data.iter().map(|d| d["target"].as_str().unwrap()).collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "patterns.broken",
            "patterns.worker-0",
            "patterns.worker-1",
            "patterns.worker-2"
        ]
    );
    let broken = data
        .iter()
        .find(|d| d["target"] == "patterns.broken")
        .unwrap();
    assert_eq!(broken["ok"], false);
    assert!(
        broken["exception"].as_str().unwrap().contains("500"),
        "{broken}"
    );
    // The targets ran at the same time: their [started, ended] intervals overlap.
    let spans: Vec<(f64, f64)> = data
        .iter()
        .filter(|d| d["ok"] == true)
        .map(|d| {
            (
                d["response"]["started"].as_f64().unwrap(),
                d["response"]["ended"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 3);
    let latest_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let earliest_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        latest_start < earliest_end,
        "the fan-out targets ran one after another: {spans:?}"
    );
    for t in ["patterns.worker-0", "patterns.broken"] {
        let v = record(&srv, &format!("record:on-target:{cid}:{t}")).await;
        assert_eq!(v["phase"], "on-target", "{t}: {v}");
    }

    // Parallel: on-target for each, no on-final.
    let r = srv.post_json("/patterns/parallel", &json!({})).await;
    let cid = r.json()["cid"].as_str().unwrap().to_owned();
    for t in ["patterns.worker-0", "patterns.worker-1"] {
        let v = eventually(Duration::from_secs(10), "parallel on-target", || async {
            let v = record(&srv, &format!("record:on-target:{cid}:{t}")).await;
            (!v.is_null()).then_some(v)
        })
        .await;
        assert_eq!(v["ok"], true);
        assert_eq!(v["response"]["n"], if t.ends_with('0') { 0 } else { 1 });
    }
    assert!(
        record(&srv, &format!("record:on-final:{cid}"))
            .await
            .is_null()
    );
}
