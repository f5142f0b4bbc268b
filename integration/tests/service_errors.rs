//! A service's in-process invokes against the real binary and a real Python worker: what
//! the HTTP client of the *calling* service gets when the callee cannot be run (a missing
//! service, input it refuses, a runaway self-invoke: the caller's 500, the cause in the log),
//! what it gets when the callee answers an error itself (that answer), `invoke_async` of a
//! missing service (a warning naming it), and the awaitable forms of an async service
//! (`await self.ainvoke` of a plain service off the event loop, the awaitable cache).

use oxbus_integration::*;
use serde_json::json;
use std::time::Duration;

const SERVICES: &str = r#"
import asyncio
import threading
from oxbus import Int, NotFound, Service

STARTED = threading.Event()
GO = threading.Event()


class Callee(Service):
    name = 'se.callee'
    input = Int('n'),

    def handle(self):
        if self.request.input.n < 0:
            raise NotFound('no such n: %d' % self.request.input.n)
        self.response.payload = {'double': self.request.input.n * 2}


def _payload(request):
    query = request.http.query
    return {'n': query['n']} if 'n' in query else None


class Caller(Service):
    name = 'se.caller'

    def handle(self):
        self.response.payload = self.invoke(self.request.http.params['target'],
                                            _payload(self.request))


class ACaller(Service):
    name = 'se.acaller'

    async def handle(self):
        self.response.payload = await self.ainvoke(self.request.http.params['target'],
                                                   _payload(self.request))


class Loop(Service):
    name = 'se.loop'

    def handle(self):
        self.invoke(self.name)


class Fire(Service):
    name = 'se.fire'

    def handle(self):
        self.response.payload = {'cid': self.invoke_async('se.nowhere', {'x': 1})}


class Blocker(Service):
    """A plain service that blocks until the release request has run."""
    name = 'se.blocker'

    def handle(self):
        STARTED.set()
        self.response.payload = {'released': GO.wait(60)}


class Offload(Service):
    name = 'se.offload'

    async def handle(self):
        self.response.payload = await self.ainvoke('se.blocker')


class Release(Service):
    """An unrelated async request: it can run only while the event loop is free."""
    name = 'se.release'

    async def handle(self):
        while not STARTED.is_set():  # the blocker is running (ordered by the event)
            await asyncio.sleep(0.005)
        GO.set()
        self.response.payload = {'released_it': True}


class ACache(Service):
    name = 'se.acache'

    async def handle(self):
        c = self.cache.default
        await c.aset('se:k', {'v': 1})
        got = await c.aget('se:k')
        n = await c.aincr('se:n', 5)
        deleted = await c.adelete('se:k')
        try:
            c.get('se:k')
            blocking = 'allowed'
        except RuntimeError as e:
            blocking = str(e)
        self.response.payload = {'got': got, 'n': n, 'deleted': deleted,
                                 'after': await c.aget('se:k', 'gone'),
                                 'blocking': blocking}
"#;

async fn start() -> Server {
    // One worker: the concurrent requests below must share its event loop.
    Env::new()
        .workers(1)
        .service("se.py", SERVICES)
        .channel("/call/{target}", &["GET"], "se.caller")
        .channel("/acall/{target}", &["GET"], "se.acaller")
        .channel("/loop", &["GET"], "se.loop")
        .channel("/fire", &["GET"], "se.fire")
        .channel("/offload", &["GET"], "se.offload")
        .channel("/release", &["GET"], "se.release")
        .channel("/acache", &["GET"], "se.acache")
        .start()
        .await
}

/// The one log line of `cid` that contains `text`.
async fn logged(srv: &Server, cid: &str, text: &str) -> String {
    eventually(Duration::from_secs(10), text, || {
        let lines: Vec<String> = srv
            .log_lines(cid)
            .into_iter()
            .filter(|l| l.contains(text))
            .collect();
        async move { lines.into_iter().next() }
    })
    .await
}

#[tokio::test]
async fn invoke_errors_are_the_calling_services_500() {
    let srv = start().await;
    for (prefix, caller) in [("/call", "se.caller"), ("/acall", "se.acaller")] {
        // A callee that does not exist: not the client's 404 but the caller's 500.
        let r = srv.get(&format!("{prefix}/se.nowhere")).await;
        assert_eq!(r.status, 500, "{prefix}: {:?}", r.body);
        assert_eq!(r.json(), json!({"error": "internal error", "cid": r.cid()}));
        let line = logged(&srv, &r.cid(), "InvokeError").await;
        assert!(
            line.contains(&format!(
                "{caller} failed: InvokeError: {caller} invoked se.nowhere: no such service"
            )),
            "{line}"
        );

        // Input the callee refuses: the caller's 500, the field only in the log.
        let r = srv.get(&format!("{prefix}/se.callee?n=x")).await;
        assert_eq!(r.status, 500, "{prefix}: {:?}", r.body);
        assert_eq!(r.json(), json!({"error": "internal error", "cid": r.cid()}));
        let line = logged(&srv, &r.cid(), "InvokeError").await;
        assert!(
            line.contains(&format!(
                "{caller} invoked se.callee with input it refused: invalid input: n: \
                 expected an integer"
            )),
            "{line}"
        );

        // The callee's own NotFound is its answer: the client gets it as it is.
        let r = srv.get(&format!("{prefix}/se.callee?n=-1")).await;
        assert_eq!(r.status, 404, "{prefix}: {:?}", r.body);
        assert_eq!(r.json(), json!({"error": "no such n: -1", "cid": r.cid()}));

        let r = srv.get(&format!("{prefix}/se.callee?n=4")).await;
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"double": 8})),
            "{prefix}"
        );
    }

    // A service invoking itself: stopped at the depth limit with one short log line.
    let r = srv.get("/loop").await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert_eq!(r.json(), json!({"error": "internal error", "cid": r.cid()}));
    let line = logged(&srv, &r.cid(), "InvokeDepthError").await;
    assert!(
        line.contains(
            "se.loop failed: InvokeDepthError: invoke depth limit (50) reached: se.loop -> \
             se.loop -> se.loop -> se.loop -> ... -> se.loop (51 nested invokes"
        ),
        "{line}"
    );
    let log = srv.log();
    assert!(!log.contains("RecursionError"), "{log}");
    assert!(!log.contains("Traceback"), "{log}");

    srv.assert_no_errors(&[
        "se.caller failed: InvokeError",
        "se.acaller failed: InvokeError",
        "se.loop failed: InvokeDepthError",
    ]);
}

#[tokio::test]
async fn invoke_async_of_a_missing_service_is_logged() {
    let srv = start().await;
    let r = srv.get("/fire").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let async_cid = r.json()["cid"].as_str().unwrap().to_owned();
    let line = logged(
        &srv,
        &async_cid,
        "invoke_async of a service that does not exist",
    )
    .await;
    assert!(line.contains("se.nowhere"), "{line}");
    assert!(line.contains("caller=se.fire"), "{line}");
    assert!(line.contains(" WARN "), "{line}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn ainvoke_runs_a_plain_callee_off_the_event_loop() {
    let srv = start().await;
    // The plain callee blocks until the release request has run; that request is async,
    // so it runs only if the callee is not holding the worker's event loop (it would wait
    // out its 60 s safety limit and answer released: false, or the request time out).
    let (held, released) = tokio::join!(srv.get("/offload"), srv.get("/release"));
    assert_eq!(released.status, 200, "{:?}", released.body);
    assert_eq!(released.json(), json!({"released_it": true}));
    assert_eq!(held.status, 200, "{:?}", held.body);
    assert_eq!(held.json(), json!({"released": true}));
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn async_services_use_the_awaitable_cache() {
    let srv = start().await;
    let r = srv.get("/acache").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["got"], json!({"v": 1}));
    assert_eq!(j["n"], 5);
    assert_eq!(j["deleted"], true);
    assert_eq!(j["after"], "gone");
    let blocking = j["blocking"].as_str().unwrap();
    assert!(
        blocking.starts_with(
            "a blocking call to the server (cache.get) from a coroutine would stall the event loop"
        ),
        "{blocking}"
    );
    srv.assert_no_errors(&[]);
}
