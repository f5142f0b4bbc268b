//! The pub/sub REST API against the real server (docs/PUBSUB.md): pubsub channels in
//! server.toml and through the admin API, who gets in (a channel's own security definition,
//! or any pub/sub endpoint's on a channel without one), the endpoints' permissions, the
//! native API's publish / pull / ack round trip with its long poll, and Zato 3.2's
//! `/zato/pubsub` shapes. Topics and endpoints are defined through the admin API
//! (`/v1/pubsub/...`); every name is unique to its test.

use base64::Engine as _;
use oxbus_integration::*;
use serde_json::{Value, json};

struct Fixture {
    srv: Server,
    token: String,
    /// Unique to the test: every topic is under `/{tag}/`.
    tag: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let srv = Env::new()
            .channel_toml("type = \"pubsub\"\nurl_path = \"/pubsub\"")
            .channel_toml("type = \"pubsub\"\nurl_path = \"/zato/pubsub\"")
            .start()
            .await;
        let token = srv.admin_token();
        Fixture {
            srv,
            token,
            tag: format!("t{}x{}", std::process::id(), next_id()),
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.srv.admin(method, path, Some(&self.token), &body).await
    }

    async fn admin_ok(&self, method: &str, path: &str, body: Value) {
        let r = self.admin(method, path, body.clone()).await;
        assert!(
            r.status == 200 || r.status == 201,
            "{method} {path} {body}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }

    /// A topic `/{tag}/{name}`: its full name.
    async fn topic(&self, name: &str) -> String {
        let full = format!("/{}/{name}", self.tag);
        self.admin_ok(
            "PUT",
            &format!("/v1/pubsub/topics{full}"),
            json!({"name": full}),
        )
        .await;
        full
    }

    /// A pub/sub endpoint whose identity is security definition `security`.
    async fn endpoint(&self, name: &str, security: &str, patterns: &[String]) {
        self.admin_ok(
            "PUT",
            &format!("/v1/pubsub/endpoints/{name}"),
            json!({"name": name, "security": security, "topic_patterns": patterns}),
        )
        .await;
    }

    async fn basic_def(&self, name: &str, user: &str, password: &str) {
        self.admin_ok(
            "POST",
            "/v1/security",
            json!({"name": name, "type": "basic", "username": user, "password": password}),
        )
        .await;
    }

    async fn call(&self, method: &str, path: &str, auth: &[(&str, &str)], body: Value) -> Resp {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(auth);
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.srv.request(method, path, &headers, &body).await
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn text(r: &Resp) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
}

/// The error code of an API error answer.
fn code(r: &Resp) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// Settings are checked, paths under a pubsub channel are its own, and nothing gets past
/// the API without an endpoint's credentials (none of this needs the broker).
#[tokio::test]
async fn pubsub_channels_are_checked_and_refuse_strangers() {
    let f = Fixture::start().await;
    let tag = &f.tag;
    let r = f
        .admin(
            "POST",
            "/v1/channels",
            json!({"type": "pubsub", "url_path": format!("/{tag}-ps"), "service": "x.y"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("runs no service"), "{}", text(&r));
    let r = f
        .admin(
            "POST",
            "/v1/channels",
            json!({"url_path": "/pubsub/topic/x", "service": "x.y"}),
        )
        .await;
    // A path the pubsub channel answers already: a conflict, named.
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("pubsub channel's prefix"), "{}", text(&r));

    // No endpoint at all: nobody's credentials open the channel without security.
    f.basic_def(&format!("{tag}-b"), &format!("{tag}-u"), "pw-1")
        .await;
    let r = f
        .call("POST", "/pubsub/topic/a", &[], json!({"data": "x"}))
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(code(&r), "unauthorized");
    let auth = basic(&format!("{tag}-u"), "pw-1");
    let r = f
        .call(
            "POST",
            "/pubsub/topic/a",
            &[("authorization", &auth)],
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    // Counted as the gate's refusals are.
    let page = prom::scrape(&f.srv).await;
    assert_eq!(
        page.get("oxbus_http_refused_total", &[("reason", "unauthorized")]),
        Some(2.0),
        "{}",
        page.text
    );

    // A channel with its own definition: the gate lets the definition's callers in, and
    // they may do nothing while no endpoint has that definition.
    f.admin_ok(
        "POST",
        "/v1/channels",
        json!({"type": "pubsub", "url_path": format!("/{tag}-sec"),
               "security": format!("{tag}-b")}),
    )
    .await;
    let path = format!("/{tag}-sec/topic/a");
    let r = f.call("POST", &path, &[], json!({"data": "x"})).await;
    assert_eq!(r.status, 401, "{}", text(&r));
    let r = f
        .call(
            "POST",
            &path,
            &[("authorization", &auth)],
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert_eq!(code(&r), "forbidden");
    assert!(text(&r).contains("no pub/sub endpoint"), "{}", text(&r));
    let r = f
        .call(
            "POST",
            &format!("/{tag}-sec/nothing/here"),
            &[("authorization", &auth)],
            Value::Null,
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (404, "not_found".into()),
        "{}",
        text(&r)
    );
    let r = f
        .call("GET", &path, &[("authorization", &auth)], Value::Null)
        .await;
    assert_eq!(r.status, 405, "{}", text(&r));
    assert_eq!(r.header("allow").as_deref(), Some("PATCH, POST"));
    assert!(r.header("x-oxbus-cid").is_some());
}

/// The native API: subscribe, publish (one message, a list, a raw body), pull, ack,
/// long poll, unsubscribe; permissions by endpoint patterns; unknown topics.
#[tokio::test]
async fn native_publish_pull_ack_round_trip() {
    let f = Fixture::start().await;
    let tag = f.tag.clone();
    let orders = f.topic("orders").await;
    let other = f.topic("other").await;
    f.basic_def(&format!("{tag}-crm"), &format!("{tag}-crm"), "crm-pw")
        .await;
    f.endpoint(
        &format!("{tag}-crm"),
        &format!("{tag}-crm"),
        &[format!("pub=/{tag}/orders*"), format!("sub=/{tag}/orders*")],
    )
    .await;
    // An API-key endpoint that may only subscribe.
    f.admin_ok(
        "POST",
        "/v1/security",
        json!({"name": format!("{tag}-key"), "type": "apikey", "header": "X-Key", "key": "k-1"}),
    )
    .await;
    f.endpoint(
        &format!("{tag}-reader"),
        &format!("{tag}-key"),
        &[format!("sub=/{tag}/*")],
    )
    .await;
    let crm_auth = basic(&format!("{tag}-crm"), "crm-pw");
    let crm = [("authorization", crm_auth.as_str())];
    let reader = [("x-key", "k-1")];

    // Who gets in, and what each may do.
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &[],
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic realm=")),
        "{:?}",
        r.headers
    );
    let wrong = basic(&format!("{tag}-crm"), "nope");
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &[("authorization", &wrong)],
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{other}"),
            &crm,
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "forbidden".into()),
        "{}",
        text(&r)
    );
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &reader,
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic/{tag}/orders-none"),
            &crm,
            json!({"data": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (404, "no_topic".into()),
        "{}",
        text(&r)
    );
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &crm,
            json!({"data": "x", "priority": 11}),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (400, "invalid".into()),
        "{}",
        text(&r)
    );

    // Subscribe, then publish four messages three ways.
    let r = f
        .call(
            "POST",
            &format!("/pubsub/subscribe/topic{orders}"),
            &crm,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let sub_key = r.json()["sub_key"].as_str().unwrap().to_owned();
    assert!(sub_key.starts_with("sk."), "{sub_key}");
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &crm,
            json!({"data": "first", "correl_id": "c-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let first = r.json()["msg_id"].as_str().unwrap().to_owned();
    assert!(first.starts_with("zpsm") && first.len() == 28, "{first}");
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &crm,
            json!({"messages": [{"data": {"n": 2}}, {"data": "third"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let ids = r.json()["msg_ids"].clone();
    assert_eq!(ids.as_array().map(Vec::len), Some(2), "{ids}");
    let r = f
        .srv
        .request(
            "POST",
            &format!("/pubsub/topic{orders}?correl_id=raw-1&has_gd=true"),
            &[("content-type", "text/csv"), ("authorization", &crm_auth)],
            b"a,b\n1,2\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let raw = r.json()["msg_id"].as_str().unwrap().to_owned();

    let r = f
        .call(
            "POST",
            "/pubsub/messages/get",
            &crm,
            json!({"sub_key": sub_key, "max_messages": 10}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let got = r.json()["messages"].as_array().cloned().unwrap_or_default();
    let got_ids: Vec<&str> = got.iter().map(|m| m["msg_id"].as_str().unwrap()).collect();
    assert_eq!(
        got_ids,
        [
            first.as_str(),
            ids[0].as_str().unwrap(),
            ids[1].as_str().unwrap(),
            &raw
        ],
        "{got:?}"
    );
    let m = &got[0];
    assert_eq!(m["topic"], orders.as_str());
    assert_eq!(m["sub_key"], sub_key.as_str());
    assert_eq!(m["data"], "first");
    assert_eq!(m["size"], 5);
    assert_eq!(m["priority"], 5);
    assert_eq!(m["mime_type"], "text/plain");
    assert_eq!(m["correl_id"], "c-1");
    assert_eq!(m["published_by"], format!("endpoint:{tag}-crm"));
    assert_eq!(m["delivery_count"], 1);
    assert!(m["pub_time_ms"].as_i64().unwrap() > 0, "{m}");
    assert_eq!(got[1]["data"], r#"{"n":2}"#);
    assert_eq!(got[1]["mime_type"], "application/json");
    assert_eq!(got[3]["data"], "a,b\n1,2\n");
    assert_eq!(got[3]["mime_type"], "text/csv");
    assert_eq!(got[3]["correl_id"], "raw-1");

    let r = f
        .call(
            "POST",
            "/pubsub/messages/ack",
            &crm,
            json!({"sub_key": sub_key, "msg_ids": got_ids}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["acked"].clone()),
        (200, json!(4)),
        "{}",
        text(&r)
    );
    let r = f
        .call(
            "POST",
            "/pubsub/messages/get",
            &crm,
            json!({"sub_key": sub_key}),
        )
        .await;
    assert_eq!(r.json()["messages"], json!([]), "{}", text(&r));

    // A long poll returns the message published while it waits: the publish is made once
    // the pull is in flight (the server's own figure says so).
    let srv_port = f.srv.port();
    let auth = crm_auth.clone();
    let key = sub_key.clone();
    let pending = tokio::spawn(async move {
        let body = json!({"sub_key": key, "wait_ms": 30000}).to_string();
        let mut c = Client::connect(srv_port).await.unwrap();
        c.request(
            "POST",
            "/pubsub/messages/get",
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            body.into(),
        )
        .await
        .unwrap()
    });
    prom::scrape_until(&f.srv, "the long poll to be in flight", |p| {
        p.get("oxbus_http_requests_in_flight", &[]) == Some(1.0)
    })
    .await;
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &crm,
            json!({"data": "late"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let late = r.json()["msg_id"].clone();
    let r = pending.await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let msgs = r.json()["messages"].clone();
    assert_eq!(msgs[0]["msg_id"], late, "{msgs}");
    assert_eq!(msgs[0]["data"], "late");

    // Another endpoint cannot pull or ack this subscription; its owner unsubscribes.
    let r = f
        .call(
            "POST",
            "/pubsub/messages/get",
            &reader,
            json!({"sub_key": sub_key}),
        )
        .await;
    assert!(r.status == 403 || r.status == 404, "{}", text(&r));
    let r = f
        .call(
            "DELETE",
            &format!("/pubsub/subscribe/topic{orders}?sub_key={sub_key}"),
            &crm,
            Value::Null,
        )
        .await;
    assert_eq!((r.status, r.json()), (200, json!({})), "{}", text(&r));
    let r = f
        .call(
            "POST",
            "/pubsub/messages/get",
            &crm,
            json!({"sub_key": sub_key}),
        )
        .await;
    assert_eq!((r.status, code(&r)), (404, "no_sub".into()), "{}", text(&r));
}

/// The endpoint's credentials are checked before the body is read (a refused caller's body
/// is never read, however large it says it is); a sub_key is usable only by its own
/// endpoint, and only under its own topic; REST subscriptions are pull ones.
#[tokio::test]
async fn credentials_before_the_body_and_sub_keys_owned() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start().await;
    let tag = f.tag.clone();
    let orders = f.topic("orders").await;
    let other = f.topic("other").await;
    f.basic_def(&format!("{tag}-crm"), &format!("{tag}-crm"), "crm-pw")
        .await;
    f.endpoint(
        &format!("{tag}-crm"),
        &format!("{tag}-crm"),
        &[format!("pub=/{tag}/*"), format!("sub=/{tag}/*")],
    )
    .await;
    f.admin_ok(
        "POST",
        "/v1/security",
        json!({"name": format!("{tag}-key"), "type": "apikey", "header": "X-Key", "key": "k-2"}),
    )
    .await;
    f.endpoint(
        &format!("{tag}-reader"),
        &format!("{tag}-key"),
        &[format!("sub=/{tag}/*")],
    )
    .await;
    // A definition no endpoint has, guarding a channel of its own.
    f.basic_def(&format!("{tag}-lone"), &format!("{tag}-lone"), "lone-pw")
        .await;
    f.admin_ok(
        "POST",
        "/v1/channels",
        json!({"type": "pubsub", "url_path": format!("/{tag}-lone"),
               "security": format!("{tag}-lone")}),
    )
    .await;
    let crm_auth = basic(&format!("{tag}-crm"), "crm-pw");
    let crm = [("authorization", crm_auth.as_str())];
    let reader = [("x-key", "k-2")];
    let lone_auth = basic(&format!("{tag}-lone"), "lone-pw");
    let lone = [("authorization", lone_auth.as_str())];

    // A head announcing a body over the server's limit: without credentials it is refused
    // as unauthenticated (checked first), not as too large (which would mean the body's
    // limit was looked at before who sent it).
    let wrong = basic(&format!("{tag}-crm"), "nope");
    for auth in ["", wrong.as_str()] {
        let port = f.srv.port();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let auth_line = if auth.is_empty() {
            String::new()
        } else {
            format!("authorization: {auth}\r\n")
        };
        let head = format!(
            "POST /pubsub/topic{orders} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
             content-type: application/json\r\n{auth_line}content-length: 999999999\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let a = raw::read_answer(&mut s, &mut buf).await.expect("an answer");
        assert_eq!(a.status, 401, "{auth:?}: {a:?}");
    }

    // One refusal whatever was wrong: a wrong password and a user no definition has read
    // the same.
    let stranger = basic(&format!("{tag}-nobody"), "crm-pw");
    let mut bodies = Vec::new();
    for auth in [wrong.as_str(), stranger.as_str()] {
        let r = f
            .call(
                "POST",
                &format!("/pubsub/topic{orders}"),
                &[("authorization", auth)],
                json!({"data": "x"}),
            )
            .await;
        assert_eq!(r.status, 401, "{}", text(&r));
        bodies.push(r.json()["error"]["message"].clone());
    }
    assert_eq!(bodies[0], bodies[1]);
    // More messages than one publish carries.
    let many: Vec<Value> = (0..1001).map(|i| json!({"data": i.to_string()})).collect();
    let r = f
        .call(
            "POST",
            &format!("/pubsub/topic{orders}"),
            &crm,
            json!({"messages": many}),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (400, "invalid".into()),
        "{}",
        text(&r)
    );
    assert!(text(&r).contains("at most 1000"), "{}", text(&r));

    let subscribe = |topic: String| {
        let f = &f;
        async move {
            let r = f
                .call(
                    "POST",
                    &format!("/pubsub/subscribe/topic{topic}"),
                    &crm,
                    Value::Null,
                )
                .await;
            assert_eq!(r.status, 200, "{}", text(&r));
            r.json()["sub_key"].as_str().unwrap().to_owned()
        }
    };
    let a = subscribe(orders.clone()).await;
    let b = subscribe(other.clone()).await;

    // Another endpoint's caller: not its subscription, whatever it asks.
    for (path, body) in [
        ("/pubsub/messages/get", json!({"sub_key": a})),
        (
            "/pubsub/messages/ack",
            json!({"sub_key": a, "msg_ids": ["zpsm0"]}),
        ),
    ] {
        let r = f.call("POST", path, &reader, body).await;
        assert_eq!(
            (r.status, code(&r)),
            (403, "forbidden".into()),
            "{path}: {}",
            text(&r)
        );
        assert!(text(&r).contains(&a), "{}", text(&r));
    }
    let r = f
        .call(
            "DELETE",
            &format!("/pubsub/subscribe/topic{orders}?sub_key={a}"),
            &reader,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    // A caller without an endpoint has no subscriptions.
    let r = f
        .call(
            "POST",
            &format!("/{tag}-lone/messages/get"),
            &lone,
            json!({"sub_key": a}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(text(&r).contains("no pub/sub endpoint"), "{}", text(&r));
    // Its own sub_key under another topic's path.
    let r = f
        .call(
            "PATCH",
            &format!("/zato/pubsub/topic{orders}"),
            &crm,
            json!({"sub_key": b}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains(&other), "{}", text(&r));
    let r = f
        .call(
            "DELETE",
            &format!("/pubsub/subscribe/topic{orders}?sub_key={b}"),
            &crm,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    // The owner still pulls.
    let r = f
        .call("POST", "/pubsub/messages/get", &crm, json!({"sub_key": a}))
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));

    // Push deliveries are not made through the REST API.
    let r = f
        .call(
            "POST",
            &format!("/pubsub/subscribe/topic{orders}"),
            &crm,
            json!({"delivery": {"type": "push", "url": "http://127.0.0.1:9/x"}}),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "forbidden".into()),
        "{}",
        text(&r)
    );
    assert!(text(&r).contains("admin API"), "{}", text(&r));
}

/// Zato 3.2's API on a channel at `/zato/pubsub`: form-encoded JSON bodies, Zato's answer
/// keys, `PATCH` to pull (what it answers is delivered), `DELETE` to unsubscribe without a
/// sub_key.
#[tokio::test]
async fn zato_api_shapes() {
    let f = Fixture::start().await;
    let tag = f.tag.clone();
    let topic = f.topic("sample").await;
    f.basic_def(&format!("{tag}-z"), &format!("{tag}-z"), "z-pw")
        .await;
    f.endpoint(
        &format!("{tag}-z"),
        &format!("{tag}-z"),
        &[format!("pub=/{tag}/*"), format!("sub=/{tag}/*")],
    )
    .await;
    let auth = basic(&format!("{tag}-z"), "z-pw");
    // curl -d sends its JSON as form data: a Zato channel reads it as JSON all the same.
    let zato = |method: &'static str, path: String, body: Value| {
        let auth = auth.clone();
        let srv = &f.srv;
        async move {
            let body = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            srv.request(
                method,
                &path,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &auth),
                ],
                &body,
            )
            .await
        }
    };
    let r = zato(
        "POST",
        format!("/zato/pubsub/subscribe/topic{topic}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let sub = r.json();
    assert!(sub["sub_key"].is_string(), "{sub}");
    assert!(sub["queue_depth"].is_u64(), "{sub}");
    let r = zato(
        "POST",
        format!("/zato/pubsub/topic{topic}"),
        json!({"data": "hello", "priority": 7, "expiration": 3600000, "correl_id": "zc"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let msg_id = r.json()["msg_id"].clone();
    assert!(
        msg_id.as_str().is_some_and(|m| m.starts_with("zpsm")),
        "{msg_id}"
    );

    let r = zato("PATCH", format!("/zato/pubsub/topic{topic}"), Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let list = r.json();
    let m = &list[0];
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(m["msg_id"], msg_id);
    assert_eq!(m["topic_name"], topic.as_str());
    assert_eq!(m["sub_key"], sub["sub_key"]);
    assert_eq!(m["data"], "hello");
    assert_eq!(m["priority"], 7);
    assert_eq!(m["expiration"], 3600000);
    assert_eq!(m["correl_id"], "zc");
    assert_eq!(m["delivery_count"], 1);
    for key in ["pub_time_iso", "expiration_time_iso"] {
        let iso = m[key].as_str().unwrap_or_else(|| panic!("{key}: {m}"));
        assert!(chrono_like(iso), "{key}: {iso}");
    }
    // Pulled with PATCH is delivered: the queue is empty now.
    let r = zato("PATCH", format!("/zato/pubsub/topic{topic}"), Value::Null).await;
    assert_eq!((r.status, r.json()), (200, json!([])), "{}", text(&r));
    let r = zato(
        "DELETE",
        format!("/zato/pubsub/subscribe/topic{topic}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = zato("PATCH", format!("/zato/pubsub/topic{topic}"), Value::Null).await;
    assert_eq!(r.status, 404, "{}", text(&r));
}

/// `2026-12-06T22:03:03.148000`: Zato's ISO times (UTC, microseconds, no zone).
fn chrono_like(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 26
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}
