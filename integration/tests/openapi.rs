//! The OpenAPI document against the real binary and real Python workers: what the services
//! declare in SimpleIO reaches the document, the document passes a real validator
//! (`openapi-spec-validator` from PyPI), it follows live changes, and `oxbus openapi`
//! prints the same bytes the server serves.

use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

const CRM: &str = r#"
from oxbus import Service

class GetCustomer(Service):
    name = 'crm.customer.get'
    input = 'customer_id', '-needs_details'
    output = 'name', '-email', '-is_vip'

    def handle(self):
        i = self.request.input
        self.response.payload = {'name': 'Ann', 'is_vip': i.customer_id == 1, 'extra': 'dropped'}


class CreateCustomer(Service):
    name = 'crm.customer.create'
    input = 'name', '-email', '-is_vip', '-referrer_id'
    output = ('customer_id',)

    def handle(self):
        self.response.payload = {'customer_id': 7}


class Orders(Service):
    name = 'crm.orders'
    input = ('customer_id',)

    def handle_GET(self):
        self.response.payload = {'orders': []}

    def handle_POST(self):
        self.response.payload = {'created': True}


class Upload(Service):
    name = 'files.upload'
    input = ('file_id',)

    def handle(self):
        self.response.payload = self.request.raw


class Free(Service):
    name = 'misc.free'

    def handle(self):
        self.response.payload = {'ok': True}
"#;

const LATER: &str = r#"
from oxbus import Service

class Ping(Service):
    name = 'later.ping'
    input = 'count_size', '-should_echo'
    output = ('pong',)

    def handle(self):
        self.response.payload = {'pong': self.request.input.count_size}
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("crm.py", CRM)
        .channel("/customers/{customer_id}", &["GET"], "crm.customer.get")
        .channel("/customers", &["POST"], "crm.customer.create")
        .channel("/customers/{customer_id}/orders", &[], "crm.orders")
        .channel_fmt("/files/{file_id}", &["PUT"], "files.upload", "raw")
        .channel("/free", &[], "misc.free")
        .set("openapi", "title", "\"CRM API\"")
        .set("openapi", "version", "\"2.1\"")
}

/// Runs openapi-spec-validator on the document; panics with its report when it is refused,
/// and (loudly, not as a skip) when the validator is not installed.
fn validate(srv: &Server, doc: &[u8], name: &str) {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "openapi-spec-validator is missing: run the tests with `bash .ci/test.sh`, which \
         installs it into its venv (target/test-venv, first on PATH), or install it with \
         `python3 -m pip install openapi-spec-validator`: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let file = srv.dir.join(name);
    std::fs::write(&file, doc).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{name} is not a valid OpenAPI 3.1 document:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(doc)
    );
    // The validator's own verdict line, so a change in its output format cannot make this
    // check pass on something it did not look at.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": OK"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn op_ids(doc: &Value, path: &str) -> Vec<String> {
    doc["paths"][path]
        .as_object()
        .unwrap_or_else(|| panic!("no path {path} in {doc:#}"))
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_document_describes_the_channels_and_passes_the_validator() {
    let srv = env().start().await;
    let r = srv.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.cid().len(), 20);
    validate(&srv, &r.body, "openapi.json");
    let doc = r.json();

    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "CRM API");
    assert_eq!(doc["info"]["version"], "2.1+config.0");
    let mut paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/customers",
            "/customers/{customer_id}",
            "/customers/{customer_id}/orders",
            "/files/{file_id}",
            "/free"
        ]
    );

    // GET with a path parameter typed by SimpleIO, the optional input in the query string,
    // and the declared output as the 200 schema.
    let get = &doc["paths"]["/customers/{customer_id}"]["get"];
    assert_eq!(op_ids(&doc, "/customers/{customer_id}"), ["get"]);
    assert_eq!(get["operationId"], "crm.customer.get");
    assert_eq!(get["tags"], json!(["crm"]));
    assert_eq!(
        get["parameters"],
        json!([
            {"name": "customer_id", "in": "path", "required": true, "schema": {"type": "integer"}},
            {"name": "needs_details", "in": "query", "required": false, "schema": {"type": "boolean"}},
        ])
    );
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"],
        json!({"type": "object", "required": ["name"],
               "properties": {"name": {}, "email": {}, "is_vip": {"type": "boolean"}}})
    );
    for status in ["400", "404", "413", "431", "500", "503", "504"] {
        let name = get["responses"][status]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("no {status} in {get:#}"))
            .rsplit('/')
            .next()
            .unwrap();
        assert_eq!(
            doc["components"]["responses"][name]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{status}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["Error"]["required"],
        json!(["error", "cid"])
    );

    // POST: the input is the JSON body, required fields listed, types from the names.
    let post = &doc["paths"]["/customers"]["post"];
    assert_eq!(post["requestBody"]["required"], true);
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"],
        json!({"type": "object", "required": ["name"], "properties": {
            "name": {}, "email": {}, "is_vip": {"type": "boolean"},
            "referrer_id": {"type": "integer"}}})
    );
    assert!(post.get("parameters").is_none());

    // A channel for any method, to a service with handle_GET/handle_POST: just those two.
    assert_eq!(
        op_ids(&doc, "/customers/{customer_id}/orders"),
        ["get", "post"]
    );
    // A raw channel: octet-stream in and out; its input comes from the path.
    let put = &doc["paths"]["/files/{file_id}"]["put"];
    assert_eq!(
        put["requestBody"]["content"],
        json!({"application/octet-stream": {}})
    );
    assert_eq!(put["parameters"][0]["schema"], json!({"type": "integer"}));
    // No SimpleIO: free-form objects; any method: the five common ones.
    assert_eq!(
        op_ids(&doc, "/free"),
        ["delete", "get", "patch", "post", "put"]
    );
    assert_eq!(
        doc["paths"]["/free"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        json!({"type": "object", "additionalProperties": true})
    );

    // What the document says is what the server does: a path parameter that is not an
    // integer is a 400 with the Error shape naming the field; the output is filtered.
    let r = srv.get("/customers/abc").await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["field"], "customer_id");
    assert!(e["error"].is_string() && e["cid"] == r.cid());
    let r = srv.get("/customers/1").await;
    assert_eq!(r.json(), json!({"name": "Ann", "is_vip": true}));
    // /openapi.json is GET only; any other method goes through the routing table.
    assert_eq!(
        srv.request("POST", "/openapi.json", &[], b"").await.status,
        404
    );
}

#[tokio::test]
async fn live_changes_show_at_once_and_the_cli_prints_the_served_document() {
    let srv = env().start().await;
    let token = srv.admin_token();

    // A channel created through the admin API is in the very next document.
    let ch = json!({"name": "live", "url_path": "/live/{customer_id}", "methods": ["GET"],
                    "service": "crm.customer.get"});
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let doc = srv.get("/openapi.json").await.json();
    let live = &doc["paths"]["/live/{customer_id}"]["get"];
    assert_eq!(live["x-oxbus-channel"], "live");
    assert_eq!(live["parameters"][0]["schema"], json!({"type": "integer"}));
    // Its service is behind two operations now: the ids stay unique.
    assert_ne!(
        live["operationId"],
        doc["paths"]["/customers/{customer_id}"]["get"]["operationId"]
    );

    // A module deployed through the admin API: its declarations come from the workers'
    // modules.activate replies; a channel to a service not deployed yet says so.
    let ch =
        json!({"name": "ping", "url_path": "/ping", "methods": ["POST"], "service": "later.ping"});
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let doc = srv.get("/openapi.json").await.json();
    let ping = &doc["paths"]["/ping"]["post"];
    assert!(
        ping["description"]
            .as_str()
            .unwrap()
            .contains("not deployed"),
        "{ping:#}"
    );
    let body = json!({"modules": [{"name": "later", "source": LATER}], "deployed_by": "it"});
    let r = srv
        .admin(
            "POST",
            "/v1/modules",
            Some(&token),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // A channel behind a security definition, an allow list and a rate limit: its
    // requirement, the scheme and the answers the gate gives are described.
    for (path, body) in [
        (
            "/v1/security",
            json!({"name": "partners", "type": "apikey", "header": "X-Partner-Key",
                                "key": "k", "rate_limit": {"requests": 5}}),
        ),
        (
            "/v1/security",
            json!({"name": "idp", "type": "jwt", "algorithms": ["HS256"], "secret": "s"}),
        ),
        (
            "/v1/channels",
            json!({"name": "guarded", "url_path": "/guarded", "methods": ["POST"],
                                "service": "later.ping", "security": "partners",
                                "allow_from": ["10.0.0.0/8"]}),
        ),
    ] {
        let r = srv
            .admin("POST", path, Some(&token), body.to_string().as_bytes())
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let served = srv.get("/openapi.json").await;
    validate(&srv, &served.body, "live.json");
    let doc = served.json();
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({"partners": {"type": "apiKey", "in": "header", "name": "X-Partner-Key"},
               "idp": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}})
    );
    let guarded = &doc["paths"]["/guarded"]["post"];
    assert_eq!(guarded["security"], json!([{"partners": []}]));
    for status in ["401", "403", "429"] {
        assert!(
            guarded["responses"][status]["$ref"].is_string(),
            "{status}: {guarded:#}"
        );
    }
    assert!(doc["paths"]["/ping"]["post"].get("security").is_none());
    let ping = &served.json()["paths"]["/ping"]["post"];
    assert_eq!(
        ping["requestBody"]["content"]["application/json"]["schema"],
        json!({"type": "object", "required": ["count_size"], "properties": {
            "count_size": {"type": "integer"}, "should_echo": {"type": "boolean"}}})
    );
    assert_eq!(
        ping["responses"]["200"]["content"]["application/json"]["schema"]["required"],
        json!(["pong"])
    );

    // Deleting the channel takes it out at once.
    let r = srv
        .admin("DELETE", "/v1/channels/live", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let doc = srv.get("/openapi.json").await.json();
    assert!(doc["paths"].get("/live/{customer_id}").is_none());

    // The config version in info follows the store once the server has applied it (three
    // changes: two channels and a module... and the delete).
    let store_version =
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"]
            .as_i64()
            .unwrap();
    assert!(store_version >= 3, "{store_version}");
    let served = eventually(
        Duration::from_secs(10),
        "the applied config version",
        || async {
            let r = srv.get("/openapi.json").await;
            (r.json()["info"]["x-oxbus-config-version"] == store_version).then_some(r)
        },
    )
    .await;
    assert_eq!(
        served.json()["info"]["version"],
        format!("2.1+config.{store_version}")
    );

    // `oxbus openapi` prints exactly what the server serves.
    let url = format!("http://127.0.0.1:{}", srv.admin_port());
    let out = std::process::Command::new(oxbus_bin())
        .args(["openapi", "--server", &url, "--token", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&served.body)
    );
    // A wrong token is a one-line reason and exit code 1.
    let out = std::process::Command::new(oxbus_bin())
        .args(["openapi", "--server", &url, "--token", "bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
}
