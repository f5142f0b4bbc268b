//! Golden vectors: every frame in `testdata/v2/` decodes to the fields its manifest lists and
//! re-encodes to the same bytes. The Python suite checks the same files.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::*;
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/v2")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The object form of a compact invoke meta, as SPEC.md defines it: the positional fields
/// that are not `null`, then the fields of the last element.
fn expand_compact(compact: &Value) -> Value {
    let fields = compact.as_array().expect("a compact meta is an array");
    assert_eq!(fields.len(), COMPACT_INVOKE_FIELDS.len() + 1);
    let mut object = serde_json::Map::new();
    for (name, value) in COMPACT_INVOKE_FIELDS.iter().zip(fields) {
        if !value.is_null() {
            object.insert((*name).to_owned(), value.clone());
        }
    }
    for (name, value) in fields.last().unwrap().as_object().unwrap() {
        assert!(
            !COMPACT_INVOKE_FIELDS.contains(&name.as_str()),
            "{name} has a position"
        );
        object.insert(name.clone(), value.clone());
    }
    Value::Object(object)
}

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("vectors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["protocol"], PROTOCOL_VERSION);
    v["vectors"].as_array().unwrap().clone()
}

#[test]
fn every_kind_has_a_vector() {
    let names: Vec<String> = vectors()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in Kind::ALL {
        assert!(names.iter().any(|n| n == k.name()), "no vector for {k:?}");
    }
}

#[test]
fn golden_vectors_decode_and_reencode_byte_for_byte() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let wire = std::fs::read(dir().join(v["file"].as_str().unwrap())).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let frame = FrameDecoder::default()
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert!(buf.is_empty(), "{name}: trailing bytes");
        assert_eq!(frame.kind.name(), v["kind"].as_str().unwrap(), "{name}");
        assert_eq!(
            u64::from(frame.flags),
            v["flags"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(frame.stream),
            v["stream"].as_u64().unwrap(),
            "{name}"
        );

        let mut out = BytesMut::new();
        if let Some(meta) = v.get("meta") {
            let (m, body) = frame.split_meta().unwrap();
            assert_eq!(&m[..], meta.as_str().unwrap().as_bytes(), "{name}: meta");
            assert_eq!(
                body.to_vec(),
                unhex(v["body_hex"].as_str().unwrap()),
                "{name}: body"
            );
            encode_meta_frame(&mut out, frame.kind, frame.flags, frame.stream, &m, &body).unwrap();
            // The meta is also valid for the typed structs of its direction.
            match frame.kind {
                Kind::Call => {
                    // A compact meta means what its object form says.
                    let object = match v.get("meta_object") {
                        Some(o) => {
                            let o = o.as_str().unwrap();
                            let compact: Value = serde_json::from_slice(&m).unwrap();
                            assert_eq!(
                                expand_compact(&compact),
                                serde_json::from_str::<Value>(o).unwrap(),
                                "{name}: compact meta"
                            );
                            o.as_bytes().to_vec()
                        }
                        None => m.to_vec(),
                    };
                    let c: CallMetaIn = serde_json::from_slice(&object).unwrap();
                    assert_eq!(c.op, "invoke");
                }
                Kind::Reply => {
                    let r: ReplyMeta = serde_json::from_slice(&m).unwrap();
                    assert!(r.status >= 200);
                    // The typed struct re-serialises to the vector's meta, `error` included.
                    assert_eq!(serde_json::to_vec(&r).unwrap(), &m[..], "{name}: ReplyMeta");
                    if name == "reply_error_input" {
                        assert_eq!(r.error.as_deref(), Some(REPLY_ERROR_INPUT));
                    }
                    if name == "reply_error_exc" {
                        assert_eq!(r.exc.as_deref(), Some("ValueError"));
                    }
                }
                _ => unreachable!(),
            }
        } else {
            let payload: Vec<u8> = match v.get("payload_text") {
                Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
                None => unhex(v["payload_hex"].as_str().unwrap()),
            };
            assert_eq!(frame.payload.to_vec(), payload, "{name}: payload");
            let f = Frame {
                kind: frame.kind,
                flags: frame.flags,
                stream: frame.stream,
                payload: Bytes::from(payload),
            };
            f.encode(&mut out);
            match frame.kind {
                Kind::Hello => drop(frame.parse_json::<Hello>().unwrap()),
                Kind::Welcome => drop(frame.parse_json::<Welcome>().unwrap()),
                Kind::Ready => drop(frame.parse_json::<Ready>().unwrap()),
                Kind::Log => drop(frame.parse_json::<LogRecord>().unwrap()),
                Kind::Error => drop(frame.parse_json::<ErrorMsg>().unwrap()),
                _ => {}
            }
        }
        assert_eq!(&out[..], &wire[..], "{name}: re-encoding differs");
    }
}

#[test]
fn invoke_meta_serialises_like_the_vector() {
    // The supervisor's own encoder produces the exact bytes of the `call_invoke_http` vector.
    let headers: Vec<(&str, std::borrow::Cow<str>)> = vec![
        ("host", "127.0.0.1:17010".into()),
        ("content-type", "application/json".into()),
        ("content-length", "27".into()),
    ];
    let params: Vec<(String, String)> = vec![];
    let meta = InvokeMeta {
        op: "invoke",
        service: "demo.echo",
        cid: "0f3a9c1e2b4d5a6f7081",
        channel: Some("rest"),
        data_format: Some("json"),
        method: Some("POST"),
        path: Some("/echo"),
        params: Some(&params),
        query: Some(""),
        headers: Some(&headers),
        deadline_ms: Some(30000),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: None,
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    let mut out = BytesMut::new();
    encode_call(&mut out, 0, 1, &meta, br#"{"name":"Ann","n":1,"x":[1]"#).unwrap();
    let wire = std::fs::read(dir().join("call_invoke_http.bin")).unwrap();
    assert_eq!(&out[..], &wire[..]);
}

#[test]
fn invoke_meta_with_the_client_origin_serialises_like_the_vector() {
    // remote_addr is an address, written in its text form; scheme and port follow it.
    let headers: Vec<(&str, std::borrow::Cow<str>)> = vec![
        ("host", "api.example.com".into()),
        ("x-forwarded-for", "2001:db8::7, 10.0.1.5".into()),
        ("x-forwarded-proto", "https".into()),
        ("x-forwarded-port", "443".into()),
        ("x-request-id", "req-7f3a:42".into()),
    ];
    let params: Vec<(String, String)> = vec![];
    let meta = InvokeMeta {
        op: "invoke",
        service: "demo.whoami",
        cid: "req-7f3a:42",
        channel: Some("rest"),
        data_format: Some("json"),
        method: Some("GET"),
        path: Some("/whoami"),
        params: Some(&params),
        query: Some(""),
        headers: Some(&headers),
        deadline_ms: Some(30000),
        remote_addr: Some("2001:0db8:0:0:0:0:0:7".parse().unwrap()),
        scheme: Some("https"),
        port: Some(443),
        channel_name: None,
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    let mut out = BytesMut::new();
    encode_call(&mut out, 0, 7, &meta, b"").unwrap();
    let wire = std::fs::read(dir().join("call_invoke_forwarded.bin")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out[14..]),
        String::from_utf8_lossy(&wire[14..])
    );
    assert_eq!(&out[..], &wire[..]);
}

#[test]
fn invoke_meta_with_a_traceparent_serialises_like_the_vector() {
    // The trace context goes last; the request's own `traceparent` header is only a header.
    let headers: Vec<(&str, std::borrow::Cow<str>)> = vec![(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    )];
    let params: Vec<(String, String)> = vec![];
    let meta = InvokeMeta {
        op: "invoke",
        service: "demo.echo",
        cid: "0f3a9c1e2b4d5a6f7082",
        channel: Some("rest"),
        data_format: Some("json"),
        method: Some("GET"),
        path: Some("/echo"),
        params: Some(&params),
        query: Some(""),
        headers: Some(&headers),
        deadline_ms: Some(30000),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: None,
        security: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-5d1c6e0b8a2f4c93-01"),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    let mut out = BytesMut::new();
    encode_call(&mut out, 0, 9, &meta, b"").unwrap();
    let wire = std::fs::read(dir().join("call_invoke_traceparent.bin")).unwrap();
    assert_eq!(&out[..], &wire[..]);
    // A worker's call of another service carries its caller's traceparent.
    let m: CallMetaIn = serde_json::from_slice(&out[14..]).unwrap();
    assert_eq!(
        m.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-5d1c6e0b8a2f4c93-01")
    );
}

#[test]
fn a_tracestate_goes_after_the_traceparent_and_is_optional() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TS: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let meta = |tracestate: Option<&'static str>| -> InvokeMeta<'static> {
        InvokeMeta {
            op: "invoke",
            service: "demo.echo",
            cid: "c1",
            channel: Some("invoke"),
            data_format: Some("json"),
            method: None,
            path: None,
            params: None,
            query: None,
            headers: None,
            deadline_ms: None,
            remote_addr: None,
            scheme: None,
            port: None,
            channel_name: None,
            security: None,
            traceparent: Some(TP),
            tracestate,
            pubsub: None,
            mqtt: None,
            amqp: None,
            wsx: None,
            file: None,
            params_priority: None,
            job_type: None,
        }
    };
    let with = serde_json::to_string(&meta(Some(TS))).unwrap();
    assert_eq!(
        with,
        format!(
            r#"{{"op":"invoke","service":"demo.echo","cid":"c1","channel":"invoke","data_format":"json","traceparent":"{TP}","tracestate":"{TS}"}}"#
        )
    );
    let m: CallMetaIn = serde_json::from_str(&with).unwrap();
    assert_eq!(
        (m.traceparent.as_deref(), m.tracestate.as_deref()),
        (Some(TP), Some(TS))
    );
    let without = serde_json::to_string(&meta(None)).unwrap();
    assert!(!without.contains("tracestate"), "{without}");
    let m: CallMetaIn = serde_json::from_str(&without).unwrap();
    assert_eq!(m.tracestate, None);
}

#[test]
fn a_log_record_carries_its_trace_id() {
    let wire = std::fs::read(dir().join("log_trace.bin")).unwrap();
    let frame = FrameDecoder::default()
        .decode(&mut BytesMut::from(&wire[..]))
        .unwrap()
        .unwrap();
    let rec: LogRecord = frame.parse_json().unwrap();
    assert_eq!(
        rec.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(serde_json::to_vec(&rec).unwrap(), &frame.payload[..]);
    // A record of an older worker has none.
    let old = std::fs::read(dir().join("log.bin")).unwrap();
    let frame = FrameDecoder::default()
        .decode(&mut BytesMut::from(&old[..]))
        .unwrap()
        .unwrap();
    assert_eq!(frame.parse_json::<LogRecord>().unwrap().trace_id, None);
}

#[test]
fn a_log_record_carries_its_extra_fields() {
    // What the Python worker sends for logger.info('placed', extra={...}).
    let json = r#"{"level":"info","logger":"crm","msg":"placed","cid":"c1","service":"crm.get","extra":{"order":7,"who":{"name":"Ann"}}}"#;
    let rec: LogRecord = serde_json::from_str(json).unwrap();
    let extra = rec.extra.clone().unwrap();
    assert_eq!(extra["order"], 7);
    assert_eq!(extra["who"]["name"], "Ann");
    assert_eq!(serde_json::to_string(&rec).unwrap(), json);
    // A record without any (every older worker's) has none, and writes none.
    let old = std::fs::read(dir().join("log.bin")).unwrap();
    let frame = FrameDecoder::default()
        .decode(&mut BytesMut::from(&old[..]))
        .unwrap()
        .unwrap();
    let rec = frame.parse_json::<LogRecord>().unwrap();
    assert_eq!(rec.extra, None);
    assert_eq!(serde_json::to_vec(&rec).unwrap(), &frame.payload[..]);
}

#[test]
fn ready_with_and_without_simpleio_declarations() {
    let ready = |file: &str| {
        let wire = std::fs::read(dir().join(file)).unwrap();
        let frame = FrameDecoder::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        (frame.parse_json::<Ready>().unwrap(), frame.payload)
    };
    // A worker that declares nothing (or predates the fields): absent = nothing declared.
    let (old, _) = ready("ready.bin");
    assert!(
        old.services
            .iter()
            .all(|s| s.input.is_empty() && s.output.is_empty())
    );

    let (new, payload) = ready("ready_simpleio.bin");
    let crm = &new.services[0];
    fn io(e: &IoElem) -> (&str, bool, IoType) {
        (e.name.as_str(), e.required, e.kind())
    }
    assert_eq!(
        crm.input.iter().map(io).collect::<Vec<_>>(),
        [
            ("customer_id", true, IoType::Integer),
            ("needs_details", false, IoType::Boolean)
        ]
    );
    assert_eq!(
        crm.output.iter().map(io).collect::<Vec<_>>(),
        [("name", true, IoType::Any), ("email", false, IoType::Any)]
    );
    assert!(new.services[1].input.is_empty());
    // The supervisor's own encoding is the worker's, byte for byte: empty lists are left out.
    assert_eq!(serde_json::to_vec(&new).unwrap(), payload.to_vec());

    // A type this side does not know is carried and read as "any".
    let e: IoElem =
        serde_json::from_str(r#"{"name":"when","required":false,"type":"datetime"}"#).unwrap();
    assert_eq!((e.kind(), e.ty.as_str()), (IoType::Any, "datetime"));
}

#[test]
fn a_pubsub_delivery_carries_its_meta_and_others_do_not() {
    let pubsub = serde_json::json!({
        "sub_key": "sk.1",
        "topic": "/orders/*",
        "msgs": [{"msg_id": "zpsm1", "topic": "/orders/new", "size": 2}],
    });
    let meta = |p: Option<&'static Value>| -> InvokeMeta<'static> {
        InvokeMeta {
            op: "invoke",
            service: "orders.on-new",
            cid: "c1",
            channel: Some("pubsub"),
            data_format: None,
            method: None,
            path: None,
            params: None,
            query: None,
            headers: None,
            deadline_ms: None,
            remote_addr: None,
            scheme: None,
            port: None,
            channel_name: None,
            security: None,
            traceparent: None,
            tracestate: None,
            pubsub: p,
            mqtt: None,
            amqp: None,
            wsx: None,
            file: None,
            params_priority: None,
            job_type: None,
        }
    };
    let leaked: &'static Value = Box::leak(Box::new(pubsub.clone()));
    let with: Value =
        serde_json::from_str(&serde_json::to_string(&meta(Some(leaked))).unwrap()).unwrap();
    assert_eq!(with["channel"], "pubsub");
    assert_eq!(with["pubsub"], pubsub);
    let without = serde_json::to_string(&meta(None)).unwrap();
    assert!(!without.contains("pubsub\":"), "{without}");
}

#[test]
fn an_mqtt_message_carries_its_meta_and_others_do_not() {
    let m = serde_json::json!({"topic": "site/1/temp", "qos": 1, "retain": false,
                               "dup": true, "pkid": 7});
    let meta = |m: Option<&'static Value>| -> InvokeMeta<'static> {
        InvokeMeta {
            op: "invoke",
            service: "sensors.on-reading",
            cid: "c1",
            channel: Some("mqtt"),
            data_format: Some("raw"),
            method: None,
            path: None,
            params: None,
            query: None,
            headers: None,
            deadline_ms: None,
            remote_addr: None,
            scheme: None,
            port: None,
            channel_name: Some("sensors"),
            security: None,
            traceparent: None,
            tracestate: None,
            pubsub: None,
            mqtt: m,
            amqp: None,
            wsx: None,
            file: None,
            params_priority: None,
            job_type: None,
        }
    };
    let leaked: &'static Value = Box::leak(Box::new(m.clone()));
    let with: Value =
        serde_json::from_str(&serde_json::to_string(&meta(Some(leaked))).unwrap()).unwrap();
    assert_eq!(with["channel"], "mqtt");
    assert_eq!(with["mqtt"], m);
    let without: Value =
        serde_json::from_str(&serde_json::to_string(&meta(None)).unwrap()).unwrap();
    assert!(without.get("mqtt").is_none(), "{without}");
}

/// The `CALL` bytes of `meta` in the compact form, with `body`, on `stream`.
fn compact_call<H: serde::Serialize>(
    stream: u32,
    meta: &InvokeMeta<'_, H>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_call(&mut out, 0, stream, &CompactInvoke(meta), body).unwrap();
    out.to_vec()
}

#[test]
fn compact_invoke_metas_serialise_like_the_vectors() {
    let headers: Vec<(&str, std::borrow::Cow<str>)> = vec![
        ("host", "127.0.0.1:8107".into()),
        ("content-type", "application/json".into()),
        ("content-length", "27".into()),
    ];
    let no_params: Vec<(String, String)> = vec![];
    let http = InvokeMeta {
        op: "invoke",
        service: "demo.echo",
        cid: "d1cba197000000003d39",
        channel: Some("rest"),
        data_format: Some("json"),
        method: Some("POST"),
        path: Some("/echo"),
        params: Some(&no_params),
        query: Some(""),
        headers: Some(&headers),
        deadline_ms: Some(29999),
        remote_addr: Some("127.0.0.1".parse().unwrap()),
        scheme: Some("http"),
        port: Some(8107),
        channel_name: Some("/echo"),
        security: None,
        traceparent: Some("00-bbd496f6ee5a4266e97695eae198dad2-f516c1b85093b8f1-00"),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    assert_eq!(
        compact_call(11, &http, br#"{"name":"Ann","n":1,"x":[1]}"#),
        std::fs::read(dir().join("call_invoke_compact.bin")).unwrap()
    );

    let bin_header: Vec<(&str, std::borrow::Cow<str>)> = vec![("x-bin", "caf\u{fffd}".into())];
    let params = vec![("id".to_owned(), "7".to_owned())];
    let rest = InvokeMeta {
        service: "crm.customer.get",
        cid: "req-7f3a:42",
        data_format: Some("raw"),
        method: Some("GET"),
        path: Some("/crm/7"),
        params: Some(&params),
        query: Some("a=%C3%A9"),
        headers: Some(&bin_header),
        deadline_ms: Some(1500),
        remote_addr: Some("2001:db8::7".parse().unwrap()),
        scheme: Some("https"),
        port: Some(443),
        channel_name: Some("crm"),
        security: Some(SecurityMeta {
            name: "crm.basic",
            kind: "basic",
            username: Some("ann"),
            subject: None,
        }),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        tracestate: Some("congo=t61rcWkgMzE"),
        params_priority: Some("msg-over-channel-params"),
        ..http.clone()
    };
    assert_eq!(
        compact_call(12, &rest, b"\x00\x01\xff"),
        std::fs::read(dir().join("call_invoke_compact_rest.bin")).unwrap()
    );

    // A call that did not come over HTTP: its absent fields are nulls.
    let sparse: InvokeMeta<'_> = InvokeMeta {
        op: "invoke",
        service: "demo.visits",
        cid: "0f3a9c1e2b4d5a6f7083",
        channel: Some("scheduler"),
        data_format: Some("json"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(30000),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: Some("demo-visits"),
        security: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01"),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: Some("interval_based"),
    };
    assert_eq!(
        compact_call(13, &sparse, b""),
        std::fs::read(dir().join("call_invoke_compact_sparse.bin")).unwrap()
    );
}

#[test]
fn a_compact_meta_says_what_the_object_form_says_for_every_field() {
    // Every field of InvokeMeta set: the compact form, expanded, is the object form.
    let headers: Vec<(&str, std::borrow::Cow<str>)> = vec![("a", "1".into()), ("a", "2".into())];
    let params = vec![("id".to_owned(), "7".to_owned())];
    let extra = serde_json::json!({"k": [1, "x"]});
    let meta = InvokeMeta {
        op: "invoke",
        service: "s",
        cid: "c",
        channel: Some("rest"),
        data_format: Some("json"),
        method: Some("PUT"),
        path: Some("/p"),
        params: Some(&params),
        query: Some("q=1"),
        headers: Some(&headers),
        deadline_ms: Some(5),
        remote_addr: Some("::1".parse().unwrap()),
        scheme: Some("https"),
        port: Some(1),
        channel_name: Some("n"),
        security: Some(SecurityMeta {
            name: "d",
            kind: "jwt",
            username: None,
            subject: Some("sub"),
        }),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        tracestate: Some("a=b"),
        pubsub: Some(&extra),
        mqtt: Some(&extra),
        amqp: Some(&extra),
        wsx: Some(WsxMeta {
            client_id: "w",
            event: "message",
            binary: true,
        }),
        file: Some(&extra),
        params_priority: Some("channel-params-over-msg"),
        job_type: Some("cron_style"),
    };
    let object = serde_json::to_value(&meta).unwrap();
    let compact = serde_json::to_value(CompactInvoke(&meta)).unwrap();
    assert_eq!(expand_compact(&compact), object);
    // And with nothing optional set.
    let bare = InvokeMeta {
        channel: None,
        data_format: None,
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: None,
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: None,
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
        ..meta.clone()
    };
    let compact = serde_json::to_value(CompactInvoke(&bare)).unwrap();
    assert_eq!(
        expand_compact(&compact),
        serde_json::to_value(&bare).unwrap()
    );
    assert_eq!(
        serde_json::to_string(&CompactInvoke(&bare)).unwrap(),
        r#"["invoke","s","c",null,null,null,null,null,null,null,null,null,null,null,null,null,{}]"#
    );
}
