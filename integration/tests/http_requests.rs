//! What a service reads of an HTTP request and answers, end to end over HTTP: repeated
//! query keys, form and multipart bodies, catch-all path parameters, the response's
//! `Content-Type` header, and the one shape of a 405 (the channel's and the service's).

use oxbus_integration::*;
use serde_json::{Value, json};

const SERVICES: &str = r#"
from oxbus import Service, MethodNotAllowed


class Query(Service):
    name = 'req.query'

    def handle(self):
        q = self.request.http.query
        self.response.payload = {'one': q.get('k'), 'all': q.getlist('k')}


class Form(Service):
    name = 'req.form'
    input = '-title', '-count_count'

    def handle(self):
        form, files = self.request.form, self.request.files
        self.response.payload = {
            'input': dict(self.request.input),
            'fields': form.items_all(),
            'tags': form.getlist('tag'),
            'raw': len(self.request.raw),
            'files': [{'field': f.name, 'filename': f.filename,
                       'content_type': f.content_type, 'size': f.size,
                       'data': f.data.decode('latin-1')} for _, f in files.items_all()],
        }


class Files(Service):
    name = 'req.files'

    def handle(self):
        self.response.payload = {'params': dict(self.request.http.params),
                                 'path': self.request.http.path}


class Csv(Service):
    name = 'req.csv'

    def handle(self):
        self.response.payload = 'a,b\n1,2\n'
        self.response.headers['Content-Type'] = 'text/csv; charset=utf-8'


class Verbs(Service):
    name = 'req.verbs'

    def handle_GET(self):
        self.response.payload = {'verb': 'GET'}

    def handle_POST(self):
        raise MethodNotAllowed()


class Plain(Service):
    name = 'req.plain'

    def handle(self):
        if self.request.http.method == 'PUT':
            raise MethodNotAllowed()
        self.response.payload = {'ok': True}
"#;

async fn server() -> Server {
    Env::new()
        .service("reqsvc.py", SERVICES)
        .channel("/q", &["GET"], "req.query")
        .channel("/form", &["POST"], "req.form")
        .channel_fmt("/form-raw", &["POST"], "req.form", "raw")
        .channel("/files/{path:path}", &["GET"], "req.files")
        .channel("/files/index", &["GET"], "req.files")
        .channel("/tree/{dir}/{rest:path}", &["GET"], "req.files")
        .channel("/csv", &["GET"], "req.csv")
        .channel("/verbs", &[], "req.verbs")
        .channel("/plain", &["GET", "PUT"], "req.plain")
        .channel("/get-only", &["GET"], "req.plain")
        .channel("/put-only", &["PUT"], "req.plain")
        .start()
        .await
}

fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (headers, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[tokio::test]
async fn query_forms_catch_all_content_type_and_405() {
    let srv = server().await;

    // Repeated query keys: the last one reads as the value, getlist has them all.
    let r = srv.get("/q?k=1&x=0&k=2&k=caf%C3%A9").await;
    assert_eq!(r.status, 200, "{}", api::text(&r));
    assert_eq!(r.json(), json!({"one": "café", "all": ["1", "2", "café"]}));

    // A urlencoded form on a JSON channel: the form, and SimpleIO input from its fields.
    let form = b"title=Q3+report&count_count=7&tag=a&tag=b";
    let r = srv
        .request(
            "POST",
            "/form",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, 200, "{}", api::text(&r));
    let j = r.json();
    assert_eq!(j["input"], json!({"title": "Q3 report", "count_count": 7}));
    assert_eq!(j["tags"], json!(["a", "b"]));
    assert_eq!(j["raw"], form.len());

    // multipart/form-data: text fields, and files with their name, type and bytes (CRLFs
    // and a line that almost is the boundary inside).
    let blob: &[u8] = b"\x00\x01\r\n--bnd-42x\r\n\xff";
    let body = multipart(
        "bnd-42",
        &[
            (
                "Content-Disposition: form-data; name=\"title\"",
                b"R\xc3\xa9sum\xc3\xa9",
            ),
            (
                "Content-Disposition: form-data; name=\"doc\"; filename=\"a.bin\"\r\nContent-Type: application/x-thing",
                blob,
            ),
            (
                "Content-Disposition: form-data; name=\"doc\"; filename=\"b.txt\"",
                b"hello",
            ),
        ],
    );
    for path in ["/form", "/form-raw"] {
        let r = srv
            .request(
                "POST",
                path,
                &[("content-type", "multipart/form-data; boundary=bnd-42")],
                &body,
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", api::text(&r));
        let j = r.json();
        assert_eq!(j["fields"], json!([["title", "Résumé"]]), "{path}");
        assert_eq!(
            j["files"],
            json!([
                {"field": "doc", "filename": "a.bin", "content_type": "application/x-thing",
                 "size": blob.len(), "data": blob.iter().map(|&b| b as char).collect::<String>()},
                {"field": "doc", "filename": "b.txt", "content_type": "application/octet-stream",
                 "size": 5, "data": "hello"},
            ]),
            "{path}"
        );
        assert_eq!(j["raw"], body.len());
    }
    // SimpleIO input of the JSON channel came from the multipart fields too.
    let r = srv
        .request(
            "POST",
            "/form",
            &[("content-type", "multipart/form-data; boundary=bnd-42")],
            &body,
        )
        .await;
    assert_eq!(
        r.json()["input"],
        json!({"title": "Résumé", "count_count": null})
    );

    // A malformed multipart body: 400 saying what is wrong, on both channel kinds.
    let cut = &body[..body.len() - 12];
    for path in ["/form", "/form-raw"] {
        let r = srv
            .request(
                "POST",
                path,
                &[("content-type", "multipart/form-data; boundary=bnd-42")],
                cut,
            )
            .await;
        assert_eq!(r.status, 400, "{path}: {}", api::text(&r));
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.starts_with("malformed multipart/form-data body: ")
                && error.contains("no closing boundary"),
            "{path}: {error}"
        );
    }

    // A catch-all path parameter: the rest of the path, slashes included, percent-decoded.
    let r = srv.get("/files/a/b%2Fc/caf%C3%A9.txt").await;
    assert_eq!(r.status, 200, "{}", api::text(&r));
    assert_eq!(
        r.json(),
        json!({"params": {"path": "a/b/c/café.txt"}, "path": "/files/a/b%2Fc/caf%C3%A9.txt"})
    );
    // A NUL is refused (400), in a catch-all or a {param}; `..` and invalid UTF-8 pass,
    // decoded (docs/WORKER.md).
    for path in ["/files/a%00b", "/tree/x%00/y"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", api::text(&r));
        assert!(
            api::text(&r).contains("contains NUL (%00)"),
            "{}",
            api::text(&r)
        );
    }
    assert_eq!(
        srv.get("/files/%2e%2e%2fetc%ff").await.json()["params"],
        json!({"path": "../etc\u{fffd}"})
    );
    // A static channel under it wins; an empty rest matches nothing.
    assert_eq!(srv.get("/files/index").await.json()["params"], json!({}));
    assert_eq!(srv.get("/files/").await.status, 404);
    assert_eq!(
        srv.get("/tree/src/lib/mod.rs").await.json()["params"],
        json!({"dir": "src", "rest": "lib/mod.rs"})
    );
    // The OpenAPI document names it as a path parameter of an OpenAPI template.
    let doc = srv.get("/openapi.json").await.json();
    let params = &doc["paths"]["/files/{path}"]["get"]["parameters"];
    assert_eq!(params[0]["name"], "path", "{doc}");
    assert_eq!(params[0]["in"], "path");

    // A converter the router does not have is refused at channel creation, saying why; a
    // catch-all channel created through the admin API routes at once.
    for (url_path, why) in [
        ("/dl/{rest:.*}", "unknown converter"),
        ("/dl/{rest:path}/x", "must be the last segment"),
    ] {
        let ch = json!({"url_path": url_path, "methods": ["GET"], "service": "req.files"});
        let r = api::admin(&srv, "POST", "/v1/channels", ch).await;
        assert_eq!(r.status, 400, "{url_path}: {}", api::text(&r));
        assert!(api::text(&r).contains(why), "{url_path}: {}", api::text(&r));
    }
    let ch = json!({"url_path": "/dl/{rest:path}", "methods": ["GET"], "service": "req.files"});
    let r = api::admin(&srv, "POST", "/v1/channels", ch).await;
    assert_eq!(r.status, 201, "{}", api::text(&r));
    assert_eq!(
        srv.get("/dl/x/y").await.json()["params"],
        json!({"rest": "x/y"})
    );

    // headers['Content-Type'] is the response's content type, sent once.
    let r = srv.get("/csv").await;
    assert_eq!(r.status, 200);
    let types: Vec<_> = r.headers.get_all("content-type").iter().collect();
    assert_eq!(types, ["text/csv; charset=utf-8"]);
    assert_eq!(&r.body[..], b"a,b\n1,2\n");

    // 405 has one shape whoever answers it: the channel's (a method it does not list)...
    let keys = |j: &Value| {
        let mut k: Vec<String> = j.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let r = srv.request("POST", "/get-only", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    let channel_405 = r.json();
    assert_eq!(
        channel_405["error"],
        "method POST not allowed for /get-only; allowed: GET"
    );
    assert_eq!(channel_405["allowed"], json!(["GET"]));
    // ...the worker's (no handle_DELETE)...
    let r = srv.request("DELETE", "/verbs", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, POST"));
    let j = r.json();
    assert_eq!(keys(&j), keys(&channel_405), "{j}");
    assert_eq!(
        j["error"],
        "method DELETE not allowed for /verbs; allowed: GET, POST"
    );
    assert_eq!(j["allowed"], json!(["GET", "POST"]));
    assert_eq!(j["cid"], r.cid());
    // ...and a service's own bare MethodNotAllowed(): its handlers, or else the channel's
    // methods as Allow; never the method refused (handle_POST raised it).
    let r = srv.request("POST", "/verbs", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    let j = r.json();
    assert_eq!(keys(&j), keys(&channel_405));
    assert_eq!(j["allowed"], json!(["GET"]));
    let r = srv.request("PUT", "/plain", &[], b"").await;
    assert_eq!(r.status, 405, "{}", api::text(&r));
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    let j = r.json();
    assert_eq!(keys(&j), keys(&channel_405), "{j}");
    assert_eq!(
        j["error"],
        "method PUT not allowed for /plain; allowed: GET"
    );
    assert_eq!(j["allowed"], json!(["GET"]));
    // Nothing left to allow: no Allow, no `allowed`.
    let r = srv.request("PUT", "/put-only", &[], b"").await;
    assert_eq!(r.status, 405, "{}", api::text(&r));
    assert_eq!(r.header("allow"), None);
    let j = r.json();
    assert_eq!(j["error"], "method PUT not allowed for /put-only");
    assert!(j.get("allowed").is_none(), "{j}");

    srv.assert_no_errors(&[]);
}
