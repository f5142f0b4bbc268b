//! The API gateway's checks against the real server and real Python workers: security
//! definitions (HTTP Basic, API key, JWT with HMAC, RSA, EC and a JWKS file), IP allow lists
//! behind trusted and untrusted proxies, rate limits, and live changes through the admin
//! API. Every service call is written to a file by the service itself, so "a rejected
//! request never reaches the service" is counted, not assumed.
//!
//! Over ~800 lines on purpose: one test walks every security type (a third of the file) and
//! all share `Fixture` and the key helpers; a split would copy them or cost another binary.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A service that reports what it was told about the channel and caller, and appends one
/// line per call to the file named in the module.
fn whoami(calls: &Path) -> String {
    format!(
        r#"from oxbus import Service


class WhoAmI(Service):
    name = 'sec.whoami'

    def handle(self):
        with open({calls:?}, 'a') as f:
            f.write('call\n')
        s = self.channel.security
        self.response.payload = {{
            'channel': self.channel.name, 'type': self.channel.type,
            'security': None if s is None else {{
                'name': s.name, 'type': s.type, 'username': s.username, 'subject': s.subject}},
            'headers': sorted(k.lower() for k in self.request.http.headers),
        }}
"#
    )
}

struct Fixture {
    srv: Server,
    token: String,
    calls: PathBuf,
    dir: PathBuf,
}

impl Fixture {
    async fn start(trusted: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("oxbus-sec-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let calls = dir.join("calls");
        let srv = Env::new()
            .service("sec.py", &whoami(&calls))
            .set("http", "trusted_proxies", trusted)
            .start()
            .await;
        let token = srv.admin_token();
        Fixture {
            srv,
            token,
            calls,
            dir,
        }
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(&self.calls)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.srv.admin(method, path, Some(&self.token), &body).await
    }

    async fn define(&self, def: Value) {
        let r = self.admin("POST", "/v1/security", def.clone()).await;
        assert_eq!(r.status, 201, "{def}: {}", String::from_utf8_lossy(&r.body));
    }

    async fn channel(&self, ch: Value) {
        let r = self.admin("POST", "/v1/channels", ch.clone()).await;
        assert_eq!(r.status, 201, "{ch}: {}", String::from_utf8_lossy(&r.body));
    }

    async fn call(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.srv.request("GET", path, headers, b"").await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

/// A token with `alg: none` and no signature (which no library here would make).
fn unsigned(claims: &Value) -> String {
    let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b(&json!({"alg": "none", "typ": "JWT"})),
        b(claims)
    )
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// (private PKCS#8 PEM, public PEM) of a new key.
fn keypair(dir: &Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.key"));
    let p = private.to_str().unwrap();
    let mut args = vec!["genpkey", "-out", p];
    args.extend_from_slice(genpkey);
    openssl(&args);
    let public = openssl(&["pkey", "-in", p, "-pubout"]);
    (
        std::fs::read(&private).unwrap(),
        String::from_utf8(public).unwrap(),
    )
}

/// A JWKS document holding the RSA public key of `private` under `kid`.
fn jwks(private: &Path, kid: &str) -> Value {
    let out = openssl(&[
        "rsa",
        "-in",
        private.to_str().unwrap(),
        "-noout",
        "-modulus",
    ]);
    let hex = String::from_utf8(out).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    json!({"keys": [{
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n),
        "e": "AQAB",
    }]})
}

fn status_and_reason(r: &Resp) -> (u16, String) {
    let reason = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (r.status, reason)
}

#[tokio::test]
async fn each_security_type_accepts_good_and_refuses_bad_credentials() {
    let f = Fixture::start("[]").await;
    let (rsa_private, rsa_public) = keypair(
        &f.dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_private, ec_public) = keypair(
        &f.dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let jwks_file = f.dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks(&f.dir.join("rsa.key"), "k1").to_string()).unwrap();

    f.define(json!({"name": "crm-basic", "type": "basic", "username": "ann", "password": "s3cret pass", "realm": "CRM"})).await;
    f.define(
        json!({"name": "partners", "type": "apikey", "header": "X-Partner-Key", "key": "pk-123"}),
    )
    .await;
    f.define(json!({"name": "jwt-hs", "type": "jwt", "algorithms": ["HS256"], "secret": "hs-secret-0123456789",
                    "issuer": "https://idp.example", "audience": "oxbus-api"})).await;
    f.define(
        json!({"name": "jwt-rs", "type": "jwt", "algorithms": ["RS256"], "public_key": rsa_public}),
    )
    .await;
    f.define(
        json!({"name": "jwt-es", "type": "jwt", "algorithms": ["ES256"], "public_key": ec_public}),
    )
    .await;
    f.define(
        json!({"name": "jwt-jwks", "type": "jwt", "algorithms": ["RS256"], "jwks_file": jwks_file}),
    )
    .await;
    for (path, sec) in [
        ("/b", "crm-basic"),
        ("/k", "partners"),
        ("/jh", "jwt-hs"),
        ("/jr", "jwt-rs"),
        ("/je", "jwt-es"),
        ("/jw", "jwt-jwks"),
    ] {
        f.channel(json!({"name": path.trim_start_matches('/'), "url_path": path, "service": "sec.whoami", "security": sec}))
            .await;
    }
    let mut served = 0;
    let mut ok = async |path: &str, headers: &[(&str, &str)]| -> Value {
        let r = f.call(path, headers).await;
        assert_eq!(
            r.status,
            200,
            "{path} {headers:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        served += 1;
        r.json()
    };

    // HTTP Basic.
    let good = basic("ann", "s3cret pass");
    for _ in 0..2 {
        let j = ok("/b", &[("authorization", &good)]).await;
        assert_eq!(
            j["security"],
            json!({"name": "crm-basic", "type": "basic", "username": "ann", "subject": null})
        );
        assert_eq!(j["channel"], "b");
        assert_eq!(j["type"], "rest");
    }
    for bad in [
        None,
        Some(basic("ann", "wrong")),
        Some(basic("bob", "s3cret pass")),
        Some("Basic !!!".into()),
        Some("Bearer x".into()),
    ] {
        let h: Vec<(&str, &str)> = bad.iter().map(|v| ("authorization", v.as_str())).collect();
        let r = f.call("/b", &h).await;
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"CRM\", charset=\"UTF-8\"")
        );
        assert!(r.json()["error"].is_string());
    }

    // API key.
    let j = ok("/k", &[("x-partner-key", "pk-123")]).await;
    assert_eq!(j["security"]["type"], "apikey");
    assert_eq!(j["security"]["username"], Value::Null);
    for bad in [
        vec![],
        vec![("x-partner-key", "pk-124")],
        vec![("x-api-key", "pk-123")],
    ] {
        let r = f.call("/k", &bad).await;
        assert_eq!(r.status, 401, "{bad:?}");
        assert!(r.header("www-authenticate").is_none());
    }

    // JWT, HS256 with issuer and audience.
    let hs = EncodingKey::from_secret(b"hs-secret-0123456789");
    let claims = |extra: Value| {
        let mut c = json!({"sub": "user-7", "iss": "https://idp.example", "aud": "oxbus-api", "exp": now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let bearer = |t: String| format!("Bearer {t}");
    let t = bearer(jwt(Algorithm::HS256, &hs, None, claims(json!({}))));
    let j = ok("/jh", &[("authorization", &t)]).await;
    assert_eq!(
        j["security"],
        json!({"name": "jwt-hs", "type": "jwt", "username": null, "subject": "user-7"})
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            bearer(jwt(
                Algorithm::HS256,
                &hs,
                None,
                claims(json!({"exp": now() - 60})),
            )),
        ),
        (
            "not valid yet",
            bearer(jwt(
                Algorithm::HS256,
                &hs,
                None,
                claims(json!({"nbf": now() + 600})),
            )),
        ),
        (
            "wrong audience",
            bearer(jwt(
                Algorithm::HS256,
                &hs,
                None,
                claims(json!({"aud": "someone-else"})),
            )),
        ),
        (
            "wrong issuer",
            bearer(jwt(
                Algorithm::HS256,
                &hs,
                None,
                claims(json!({"iss": "https://evil.example"})),
            )),
        ),
        (
            "bad signature",
            bearer(jwt(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another"),
                None,
                claims(json!({})),
            )),
        ),
        (
            "lacks exp",
            bearer(jwt(
                Algorithm::HS256,
                &hs,
                None,
                json!({"sub": "x", "iss": "https://idp.example", "aud": "oxbus-api"}),
            )),
        ),
        ("alg none", bearer(unsigned(&claims(json!({}))))),
        (
            "HS384 not listed",
            bearer(jwt(Algorithm::HS384, &hs, None, claims(json!({})))),
        ),
        ("garbage", "Bearer not.a.token".into()),
    ];
    for (what, token) in &cases {
        let r = f.call("/jh", &[("authorization", token)]).await;
        let (status, reason) = status_and_reason(&r);
        assert_eq!(status, 401, "{what}: {reason}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"oxbus\", error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }
    let r = f.call("/jh", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"oxbus\"")
    );

    // JWT, RS256: good; an HS256 token signed with the public key as the HMAC secret (the
    // algorithm-confusion attack) and alg none are refused.
    let rs = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let plain = json!({"sub": "svc-1", "exp": now() + 300});
    let t = bearer(jwt(Algorithm::RS256, &rs, None, plain.clone()));
    assert_eq!(
        ok("/jr", &[("authorization", &t)]).await["security"]["subject"],
        "svc-1"
    );
    let confused = bearer(jwt(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa_public.as_bytes()),
        None,
        plain.clone(),
    ));
    let none = bearer(unsigned(&plain));
    for (what, token) in [
        ("HS256 signed with the RS256 public key", &confused),
        ("alg none", &none),
    ] {
        let r = f.call("/jr", &[("authorization", token)]).await;
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // ES256.
    let es = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let t = bearer(jwt(Algorithm::ES256, &es, None, plain.clone()));
    ok("/je", &[("authorization", &t)]).await;
    let r = f
        .call(
            "/je",
            &[(
                "authorization",
                &bearer(jwt(Algorithm::RS256, &rs, None, plain.clone())),
            )],
        )
        .await;
    assert_eq!(r.status, 401, "an RS256 token on an ES256 definition");
    // JWKS: the key by kid; an unknown kid is refused.
    let t = bearer(jwt(Algorithm::RS256, &rs, Some("k1"), plain.clone()));
    ok("/jw", &[("authorization", &t)]).await;
    let t = bearer(jwt(Algorithm::RS256, &rs, Some("k2"), plain.clone()));
    assert_eq!(f.call("/jw", &[("authorization", &t)]).await.status, 401);
    // Key rotation: a new key under the same kid in the file, the definition PUT unchanged
    // — the old key's tokens (one of them verified and cached above) stop working at once.
    let (rsa2_private, _) = keypair(
        &f.dir,
        "rsa2",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    std::fs::write(&jwks_file, jwks(&f.dir.join("rsa2.key"), "k1").to_string()).unwrap();
    let same = json!({"type": "jwt", "algorithms": ["RS256"], "jwks_file": jwks_file});
    let r = f.admin("PUT", "/v1/security/jwt-jwks", same).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let old_key = bearer(jwt(Algorithm::RS256, &rs, Some("k1"), plain.clone()));
    assert_eq!(
        f.call("/jw", &[("authorization", &old_key)]).await.status,
        401
    );
    let rs2 = EncodingKey::from_rsa_pem(&rsa2_private).unwrap();
    let t = bearer(jwt(Algorithm::RS256, &rs2, Some("k1"), plain.clone()));
    ok("/jw", &[("authorization", &t)]).await;

    // Only the accepted requests reached the service.
    assert_eq!(f.calls(), served);

    // The admin API never shows secret material.
    let list = f.admin("GET", "/v1/security", Value::Null).await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body);
    for secret in [
        "s3cret pass",
        "pk-123",
        "hs-secret-0123456789",
        "oxbus1:",
        "argon2",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let defs = list.json();
    assert_eq!(defs["security"].as_array().unwrap().len(), 6);
    let one = f
        .admin("GET", "/v1/security/partners", Value::Null)
        .await
        .json();
    assert_eq!(
        one,
        json!({"name": "partners", "type": "apikey", "header": "X-Partner-Key", "has_secret": true})
    );

    // Bad definitions are refused naming the problem; one in use is not deleted.
    for (bad, needle) in [
        (
            json!({"name": "x", "type": "jwt", "algorithms": ["HS256", "RS256"], "secret": "s"}),
            "mix",
        ),
        (
            json!({"name": "x", "type": "jwt", "algorithms": ["none"], "secret": "s"}),
            "none",
        ),
        (
            json!({"name": "x", "type": "jwt", "algorithms": ["RS256"], "public_key": "not a pem"}),
            "public_key",
        ),
        (
            json!({"name": "x", "type": "basic", "username": "u"}),
            "password",
        ),
        (json!({"name": "x", "type": "oauth"}), "type"),
        (
            json!({"name": "crm-basic", "type": "apikey", "key": "k"}),
            "exists",
        ),
    ] {
        let r = f.admin("POST", "/v1/security", bad.clone()).await;
        let (status, reason) = status_and_reason(&r);
        assert!(status == 400 || status == 409, "{bad}: {status} {reason}");
        assert!(reason.contains(needle), "{bad}: {reason}");
    }
    let r = f
        .admin("DELETE", "/v1/security/partners", Value::Null)
        .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let r = f
        .admin(
            "POST",
            "/v1/channels",
            json!({"url_path": "/nope", "service": "sec.whoami", "security": "missing"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    f.srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_channels_security_changed_through_the_admin_api_takes_effect_at_once() {
    let f = Fixture::start("[]").await;
    f.define(json!({"name": "partners", "type": "apikey", "key": "pk-1"}))
        .await;
    f.define(json!({"name": "staff", "type": "basic", "username": "ann", "password": "pw"}))
        .await;
    f.channel(json!({"name": "c", "url_path": "/c", "service": "sec.whoami"}))
        .await;
    assert_eq!(f.call("/c", &[]).await.status, 200);

    let put = |sec: Value| json!({"url_path": "/c", "service": "sec.whoami", "security": sec});
    assert_eq!(
        f.admin("PUT", "/v1/channels/c", put(json!("partners")))
            .await
            .status,
        200
    );
    assert_eq!(f.call("/c", &[]).await.status, 401);
    assert_eq!(f.call("/c", &[("x-api-key", "pk-1")]).await.status, 200);

    assert_eq!(
        f.admin("PUT", "/v1/channels/c", put(json!("staff")))
            .await
            .status,
        200
    );
    assert_eq!(f.call("/c", &[("x-api-key", "pk-1")]).await.status, 401);
    assert_eq!(
        f.call("/c", &[("authorization", &basic("ann", "pw"))])
            .await
            .status,
        200
    );

    // A new password: the old one (verified and cached before) stops working at once.
    let r = f
        .admin(
            "PUT",
            "/v1/security/staff",
            json!({"type": "basic", "username": "ann", "password": "pw2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        f.call("/c", &[("authorization", &basic("ann", "pw"))])
            .await
            .status,
        401
    );
    assert_eq!(
        f.call("/c", &[("authorization", &basic("ann", "pw2"))])
            .await
            .status,
        200
    );
    // An update without a secret keeps the stored one.
    let r = f
        .admin(
            "PUT",
            "/v1/security/staff",
            json!({"type": "basic", "username": "ann", "realm": "Staff"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = f
        .call("/c", &[("authorization", &basic("ann", "pw2"))])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        f.call("/c", &[])
            .await
            .header("www-authenticate")
            .as_deref(),
        Some("Basic realm=\"Staff\", charset=\"UTF-8\"")
    );

    // Open again.
    assert_eq!(
        f.admin("PUT", "/v1/channels/c", put(Value::Null))
            .await
            .status,
        200
    );
    let j = f.call("/c", &[]).await.json();
    assert_eq!(j["security"], Value::Null);
    // No longer used: deleted.
    assert_eq!(
        f.admin("DELETE", "/v1/security/staff", Value::Null)
            .await
            .status,
        200
    );
    assert_eq!(
        f.admin("GET", "/v1/security/staff", Value::Null)
            .await
            .status,
        404
    );
    f.srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn allow_lists_follow_the_trusted_proxy_rule() {
    // The test client connects from 127.0.0.1; trusting it makes it "the proxy".
    let behind = Fixture::start(r#"["127.0.0.1/32"]"#).await;
    behind
        .channel(
            json!({"name": "a", "url_path": "/a", "service": "sec.whoami",
                          "allow_from": ["203.0.113.0/24", "2001:db8::/32"]}),
        )
        .await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(behind.call("/a", &xff("203.0.113.7")).await.status, 200);
    assert_eq!(behind.call("/a", &xff("2001:db8::7")).await.status, 200);
    // A client left of the proxy's entry is not believed over the proxy's own report.
    assert_eq!(
        behind.call("/a", &xff("203.0.113.7, 6.6.6.6")).await.status,
        403
    );
    let r = behind.call("/a", &xff("6.6.6.6")).await;
    let (status, reason) = status_and_reason(&r);
    assert_eq!(
        (status, reason.contains("6.6.6.6")),
        (403, true),
        "{reason}"
    );
    // Without the header the proxy itself is the client, and it is not on the list.
    assert_eq!(behind.call("/a", &[]).await.status, 403);
    assert_eq!(behind.calls(), 2);

    // Nobody trusted: the same header from the same peer is ignored.
    let direct = Fixture::start("[]").await;
    direct
        .channel(
            json!({"name": "a", "url_path": "/a", "service": "sec.whoami",
                          "allow_from": ["203.0.113.0/24"]}),
        )
        .await;
    assert_eq!(direct.call("/a", &xff("203.0.113.7")).await.status, 403);
    direct.channel(json!({"name": "l", "url_path": "/l", "service": "sec.whoami", "allow_from": ["127.0.0.1"]})).await;
    assert_eq!(direct.call("/l", &xff("203.0.113.7")).await.status, 200);
    assert_eq!(direct.calls(), 1);
    let r = direct
        .admin(
            "POST",
            "/v1/channels",
            json!({"url_path": "/bad", "service": "sec.whoami", "allow_from": ["10.0.0.0/33"]}),
        )
        .await;
    let (status, reason) = status_and_reason(&r);
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("allow_from"), "{reason}");
}

#[tokio::test]
async fn rate_limits_answer_429_and_recover_after_the_window() {
    let f = Fixture::start("[]").await;
    f.channel(
        json!({"name": "r", "url_path": "/r", "service": "sec.whoami",
                     "rate_limit": {"requests": 3, "per_s": 1}}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(f.call("/r", &[]).await.status, 200);
    }
    let r = f.call("/r", &[]).await;
    let (status, reason) = status_and_reason(&r);
    assert_eq!(status, 429, "{reason}");
    assert!(reason.contains("channel r"), "{reason}");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(f.calls(), 3);
    // Refills at 3 per second: served again within the window Retry-After gave.
    eventually(Duration::from_secs(3), "the bucket to refill", || async {
        (f.call("/r", &[]).await.status == 200).then_some(())
    })
    .await;

    // A definition's limit covers all its channels together.
    f.define(json!({"name": "metered", "type": "apikey", "key": "m-1",
                    "rate_limit": {"requests": 2, "per_s": 60}}))
        .await;
    for p in ["/m1", "/m2"] {
        f.channel(json!({"name": p.trim_start_matches('/'), "url_path": p, "service": "sec.whoami", "security": "metered"})).await;
    }
    let key = [("x-api-key", "m-1")];
    assert_eq!(f.call("/m1", &key).await.status, 200);
    assert_eq!(f.call("/m2", &key).await.status, 200);
    let r = f.call("/m1", &key).await;
    let (status, reason) = status_and_reason(&r);
    assert_eq!(status, 429, "{reason}");
    assert!(reason.contains("security definition metered"), "{reason}");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&wait), "{wait}");
    // Wrong credentials do not spend the definition's budget (they are refused first).
    assert_eq!(f.call("/m2", &[("x-api-key", "nope")]).await.status, 401);
    // A config change elsewhere does not refill a bucket.
    f.channel(json!({"name": "other", "url_path": "/other", "service": "sec.whoami"}))
        .await;
    assert_eq!(f.call("/m2", &key).await.status, 429);
    let r = f
        .admin(
            "POST",
            "/v1/channels",
            json!({"url_path": "/z", "service": "sec.whoami", "rate_limit": {"requests": 0}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn definitions_export_sealed_and_import_unchanged() {
    let f = Fixture::start("[]").await;
    f.define(json!({"name": "staff", "type": "basic", "username": "ann", "password": "pw"}))
        .await;
    f.define(json!({"name": "partners", "type": "apikey", "key": "pk-1"}))
        .await;
    f.channel(json!({"name": "c", "url_path": "/c", "service": "sec.whoami", "security": "staff"}))
        .await;
    let doc = f.admin("GET", "/v1/config", Value::Null).await.json();
    let text = doc.to_string();
    assert!(!text.contains("\"pw\"") && !text.contains("pk-1"), "{text}");
    assert_eq!(doc["security"].as_array().unwrap().len(), 2);
    assert!(
        doc["security"][0]["sealed"]
            .as_str()
            .unwrap()
            .starts_with("oxbus1:")
    );
    // The export imported back: nothing changes.
    let r = f.admin("POST", "/v1/config", doc.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["changes"], json!([]), "{}", r.json());
    // Plaintext in a document: the same password is no change, a new key is.
    let r = f
        .admin(
            "POST",
            "/v1/config",
            json!({"security": [
            {"name": "staff", "type": "basic", "username": "ann", "password": "pw"},
            {"name": "partners", "type": "apikey", "key": "pk-2"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["changes"],
        json!([{"kind": "security", "name": "partners", "action": "update"}])
    );
    // A channel naming a definition the import would delete is refused, nothing written.
    let r = f
        .admin(
            "POST",
            "/v1/config?replace=1",
            json!({"channel_rest": [
        {"name": "c", "url_path": "/c", "service": "sec.whoami", "security": "staff"}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        f.call("/c", &[("authorization", &basic("ann", "pw"))])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_json_rpc_channel_is_checked_like_a_rest_one() {
    let f = Fixture::start("[]").await;
    f.define(json!({"name": "partners", "type": "apikey", "key": "pk-1"}))
        .await;
    f.channel(
        json!({"name": "rpc", "type": "jsonrpc", "url_path": "/rpc", "security": "partners"}),
    )
    .await;
    let body = json!({"jsonrpc": "2.0", "method": "sec.whoami", "id": 1}).to_string();
    let r = f.srv.request("POST", "/rpc", &[], body.as_bytes()).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(f.calls(), 0);
    let r = f
        .srv
        .request("POST", "/rpc", &[("x-api-key", "pk-1")], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let result = &r.json()["result"];
    assert_eq!(result["type"], "jsonrpc");
    assert_eq!(result["channel"], "rpc");
    assert_eq!(result["security"]["name"], "partners");
    assert_eq!(f.calls(), 1);
}

/// Two unnamed server.toml channels on one path with different methods, one of them secured:
/// each request is checked by the channel it routed to, never by its neighbour's (open) gate.
#[tokio::test]
async fn channels_sharing_a_path_keep_their_own_checks() {
    let dir = std::env::temp_dir().join(format!("oxbus-sec-{}-{}", std::process::id(), next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let calls = dir.join("calls");
    let srv = Env::new()
        .service("sec.py", &whoami(&calls))
        .channel_toml(
            r#"url_path = "/orders"
methods = ["POST"]
service = "sec.whoami"
security = "partners""#,
        )
        .channel_toml(
            r#"url_path = "/orders"
methods = ["GET"]
service = "sec.whoami""#,
        )
        .spawn();
    // The definition comes through the admin API; until then the file's channel names a
    // definition that does not exist and the server refuses to start.
    let code = {
        let mut srv = srv;
        srv.wait_exit(Duration::from_secs(30))
    };
    assert_ne!(code, Some(0));

    // With the definition in the store before start (a first server puts it there), the
    // file's two unnamed channels share a path: each method gets its own channel's checks.
    let store = dir.join("store.db");
    let key = dir.join("secret.key");
    std::fs::create_dir_all(&dir).unwrap();
    let shared = |e: Env| {
        e.service("sec.py", &whoami(&calls))
            .set(
                "store",
                "url",
                &format!("{:?}", format!("sqlite:{}", store.display())),
            )
            .set(
                "store",
                "key_file",
                &format!("{:?}", key.display().to_string()),
            )
    };
    let first = shared(Env::new()).start().await;
    let r = first
        .admin(
            "POST",
            "/v1/security",
            Some(&first.admin_token()),
            json!({"name": "partners", "type": "apikey", "key": "pk-1"})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A clean stop removes it from the store's server list (SQLite takes one server).
    let mut first = first;
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
    drop(first);
    let srv = shared(Env::new())
        .channel_toml("url_path = \"/orders\"\nmethods = [\"POST\"]\nservice = \"sec.whoami\"\nsecurity = \"partners\"")
        .channel_toml("url_path = \"/orders\"\nmethods = [\"GET\"]\nservice = \"sec.whoami\"")
        .start()
        .await;
    assert_eq!(srv.request("GET", "/orders", &[], b"").await.status, 200);
    let r = srv.request("POST", "/orders", &[], b"{}").await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        srv.request("POST", "/orders", &[("x-api-key", "pk-1")], b"{}")
            .await
            .status,
        200
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}
