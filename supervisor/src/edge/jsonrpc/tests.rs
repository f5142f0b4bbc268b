//! Unit tests of the JSON-RPC channel: parsing requests, mapping worker replies to results
//! and errors, assembling answers, the allow list and routing. Tests only; no I/O.

use super::*;

fn call(e: &Entry<'_>) -> (Option<String>, String, Option<String>) {
    match e {
        Entry::Call(c) => (
            c.id.map(|i| i.get().to_owned()),
            c.method.clone(),
            c.params.map(|p| p.get().to_owned()),
        ),
        Entry::Invalid { reason, .. } => panic!("invalid: {reason}"),
    }
}

fn invalid(e: &Entry<'_>) -> (String, String) {
    match e {
        Entry::Invalid { id, reason } => (id.get().to_owned(), reason.clone()),
        Entry::Call(c) => panic!("valid: {c:?}"),
    }
}

fn single(body: &str) -> Entry<'_> {
    match parse(body.as_bytes()) {
        Parsed::Single(e) => e,
        p => panic!("{p:?}"),
    }
}

#[test]
fn valid_requests_keep_id_and_params_as_sent() {
    let e = single(r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#);
    assert_eq!(
        call(&e),
        (Some("1".into()), "subtract".into(), Some("[42, 23]".into()))
    );
    // Named params, a string id, members in any order, unknown members ignored.
    let e = single(r#"{"id":"a\"b","params":{"x":1},"method":"m","jsonrpc":"2.0","z":0}"#);
    assert_eq!(
        call(&e),
        (
            Some(r#""a\"b""#.into()),
            "m".into(),
            Some(r#"{"x":1}"#.into())
        )
    );
    // The id's spelling survives (1.50 is not rewritten as 1.5), null is an id.
    let e = single(r#"{"jsonrpc":"2.0","method":"m","id":1.50}"#);
    assert_eq!(call(&e).0.as_deref(), Some("1.50"));
    let e = single(r#"{"jsonrpc":"2.0","method":"m","id":null}"#);
    assert_eq!(call(&e).0.as_deref(), Some("null"));
    // No id: a notification. No params: none.
    let e = single(r#"{"jsonrpc":"2.0","method":"update","params":[1,2]}"#);
    assert_eq!(call(&e).0, None);
    let e = single(r#"{"jsonrpc":"2.0","method":"m","id":7}"#);
    assert_eq!(call(&e).2, None);
    // An escaped method name is read as the string it spells.
    let e = single(r#"{"jsonrpc":"2.0","method":"a\u002eb","id":7}"#);
    assert_eq!(call(&e).1, "a.b");
}

#[test]
fn invalid_requests_are_named_and_keep_a_readable_id() {
    let cases = [
        (
            r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
            "null",
            "method",
        ),
        (
            r#"{"jsonrpc": "1.0", "method": "m", "id": 3}"#,
            "3",
            "jsonrpc",
        ),
        (r#"{"method": "m", "id": 3}"#, "3", "jsonrpc"),
        (
            r#"{"jsonrpc": 2.0, "method": "m", "id": 3}"#,
            "3",
            "jsonrpc",
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "m", "params": 5, "id": "x"}"#,
            r#""x""#,
            "params",
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "m", "params": null, "id": 4}"#,
            "4",
            "params",
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "m", "id": [1]}"#,
            "null",
            "id",
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "m", "id": true}"#,
            "null",
            "id",
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "m", "id": 1, "id": 2}"#,
            "null",
            "duplicate",
        ),
        (r#"{"foo": "boo"}"#, "null", "jsonrpc"),
        ("1", "null", "object"),
        (r#""2.0""#, "null", "object"),
    ];
    for (body, id, word) in cases {
        let (got_id, reason) = invalid(&single(body));
        assert_eq!(got_id, id, "{body}");
        assert!(reason.contains(word), "{body}: {reason}");
    }
}

#[test]
fn parse_errors_empty_and_oversized_batches() {
    assert!(matches!(
        parse(br#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#),
        Parsed::NotJson(_)
    ));
    assert!(matches!(
        parse(br#"[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method"]"#),
        Parsed::NotJson(_)
    ));
    assert!(matches!(parse(b""), Parsed::NotJson(_)));
    assert!(matches!(parse(b"\xff{}"), Parsed::NotJson(_)));
    assert!(matches!(parse(b" [ ] "), Parsed::BadBatch(r) if r.contains("empty")));
    let big = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
    assert!(matches!(parse(big.as_bytes()), Parsed::BadBatch(r) if r.contains("at most")));
    let max = format!("[{}]", vec!["1"; MAX_BATCH].join(","));
    assert!(matches!(parse(max.as_bytes()), Parsed::Batch(v) if v.len() == MAX_BATCH));
}

#[test]
fn a_batch_checks_each_element_on_its_own() {
    let Parsed::Batch(v) = parse(
        br#" [1, {"jsonrpc":"2.0","method":"a","id":1}, {"jsonrpc":"2.0","method":"n"}, {"foo":"boo"}] "#,
    ) else {
        panic!()
    };
    assert_eq!(v.len(), 4);
    assert_eq!(invalid(&v[0]).0, "null");
    assert_eq!(call(&v[1]).1, "a");
    assert_eq!(call(&v[2]).0, None);
    assert_eq!(invalid(&v[3]).0, "null");
}

fn reply(status: u16, ct: Option<&str>, body: &str, error: Option<&str>) -> Reply {
    Reply {
        status,
        content_type: ct.map(str::to_owned),
        headers: vec![],
        body: Bytes::copy_from_slice(body.as_bytes()),
        error: error.map(str::to_owned),
        exc: None,
    }
}

fn out(r: &Reply) -> Value {
    serde_json::to_value(Answer::new(RawValue::NULL, outcome(r, "c1"))).unwrap()
}

#[test]
fn replies_become_results() {
    let json = Some("application/json");
    assert_eq!(out(&reply(200, json, "7", None))["result"], json!(7));
    assert_eq!(
        out(&reply(200, json, r#"["hello", 5]"#, None))["result"],
        json!(["hello", 5])
    );
    assert_eq!(
        out(&reply(201, Some("text/plain; charset=utf-8"), "19", None))["result"],
        json!("19")
    );
    let empty = out(&reply(200, Some("text/plain; charset=utf-8"), "", None));
    assert_eq!(empty, json!({"jsonrpc": "2.0", "result": null, "id": null}));
    assert_eq!(
        out(&reply(200, Some("application/problem+json"), "{}", None))["result"],
        json!({})
    );
    // Bytes, or JSON that is not, cannot be a result: an internal error, not a bad body.
    let bin = out(&reply(200, Some("application/octet-stream"), "\x01", None));
    assert_eq!(bin["error"]["code"], INTERNAL_ERROR);
    assert!(bin.get("result").is_none());
    assert_eq!(
        out(&reply(200, json, "{", None))["error"]["code"],
        INTERNAL_ERROR
    );
}

#[test]
fn replies_become_errors() {
    let json = Some("application/json");
    let input = r#"{"error":"missing input: x","field":"x","cid":"c1"}"#;
    let e = &out(&reply(400, json, input, Some("input")))["error"];
    assert_eq!(e["code"], INVALID_PARAMS);
    assert_eq!(e["message"], "Invalid params");
    assert_eq!(e["data"]["field"], "x");
    let e = &out(&reply(
        404,
        json,
        r#"{"error":"no such service: x","cid":"c1"}"#,
        Some("no_service"),
    ))["error"];
    assert_eq!(
        (e["code"].as_i64(), &e["message"]),
        (Some(METHOD_NOT_FOUND), &json!("Method not found"))
    );
    // The same status without the worker's mark is the service's own answer.
    let e = &out(&reply(400, json, r#"{"error":"closed","cid":"c1"}"#, None))["error"];
    assert_eq!(e["code"], 400);
    assert_eq!(e["message"], "closed");
    let e = &out(&reply(
        404,
        json,
        r#"{"error":"no such customer","cid":"c1"}"#,
        None,
    ))["error"];
    assert_eq!(
        (e["code"].as_i64(), e["data"]["status"].as_u64()),
        (Some(404), Some(404))
    );
    let e = &out(&reply(
        500,
        json,
        r#"{"error":"internal error","cid":"c1"}"#,
        None,
    ))["error"];
    assert_eq!(e["code"], INTERNAL_ERROR);
    assert_eq!(e["message"], "Internal error");
    assert_eq!(
        e["data"],
        json!({"error": "internal error", "cid": "c1", "status": 500})
    );
    // A status the service set on a non-error payload: the reason is the message.
    let e = &out(&reply(418, Some("text/plain"), "tea", None))["error"];
    assert_eq!(e["message"], "I'm a teapot");
    assert_eq!(e["data"]["body"], "tea");
    let e = dispatch_error(&DispatchError::Busy, "c1");
    assert_eq!(e.code, SERVER_ERROR);
    assert_eq!(e.data.unwrap()["retryable"], true);
}

#[test]
fn assembly_single_batch_and_nothing() {
    let id: Box<RawValue> = RawValue::from_string(r#""1""#.into()).unwrap();
    let one = || {
        Answer::new(
            &id,
            Outcome::Result(RawValue::from_string("19".into()).unwrap()),
        )
    };
    assert_eq!(
        assemble(vec![one()], false).unwrap(),
        br#"{"jsonrpc":"2.0","result":19,"id":"1"}"#
    );
    assert_eq!(
        assemble(vec![one()], true).unwrap(),
        br#"[{"jsonrpc":"2.0","result":19,"id":"1"}]"#
    );
    assert_eq!(assemble(vec![], true), None);
    assert_eq!(assemble(vec![], false), None);
    let err = Answer::new(
        RawValue::NULL,
        Outcome::Error(ErrorObject {
            code: PARSE_ERROR,
            message: "Parse error".into(),
            data: None,
        }),
    );
    assert_eq!(
        assemble(vec![err], false).unwrap(),
        br#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#
    );
}

use crate::model::channel::tests::rpc;

#[test]
fn the_allow_list_and_reserved_names() {
    assert!(allowed(&rpc(&[]), "any.service"));
    assert!(!allowed(&rpc(&[]), "rpc.discover"));
    assert!(!allowed(&rpc(&[]), ""));
    assert!(allowed(&rpc(&["a", "b"]), "b"));
    assert!(!allowed(&rpc(&["a", "b"]), "c"));
    let e = method_not_found("c", "c1");
    assert_eq!(
        (e.code, e.message.as_str()),
        (METHOD_NOT_FOUND, "Method not found")
    );
}

#[test]
fn jsonrpc_channels_route_as_post_only() {
    // Through the router: GET is 405 with POST allowed; a REST channel has no services.
    let r = crate::edge::router::Router::new(&[rpc(&[])]).unwrap();
    assert!(
        matches!(r.lookup("GET", "/rpc"), crate::edge::router::Match::WrongMethod(m) if m == ["POST"])
    );
    assert!(matches!(
        r.lookup("POST", "/rpc"),
        crate::edge::router::Match::Found { .. }
    ));
    let rest = Channel {
        channel_type: ChannelType::Rest,
        service: "s".into(),
        ..rpc(&["a"])
    };
    assert!(crate::edge::router::Router::new(&[rest]).is_err());
}
