//! What a service writes reaches the server log with its invocation's cid, in order, against
//! the real binary and a real worker: `print()` lines between the logger's records, a
//! record's `extra=` fields as an object in the JSON line, and the records of a thread and
//! of a thread pool's work the service started.

use oxbus_integration::*;
use serde_json::Value;
use std::time::Duration;

const CHATTY: &str = r#"import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from oxbus import Service

pool = ThreadPoolExecutor(max_workers=1)
log = logging.getLogger('chatty.work')


class Talk(Service):
    name = 'chatty.talk'

    def handle(self):
        print('printed first')
        self.logger.info('logged second', extra={'order': 7, 'who': {'name': 'Ann'}})
        print('printed third')
        thread = threading.Thread(target=lambda: log.info('from a thread'))
        thread.start()
        thread.join()
        pool.submit(log.info, 'from a pool').result()
        self.response.payload = {'cid': self.cid}
"#;

/// Every line of `srv`'s log as JSON (the server runs with `log_format = "json"`).
fn json_lines(srv: &Server) -> Vec<Value> {
    srv.log()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn prints_extra_fields_and_threads_log_with_the_cid_in_order() {
    let srv = Env::new()
        .service("chatty.py", CHATTY)
        .channel("/talk", &["GET"], "chatty.talk")
        .set("server", "log_format", "\"json\"")
        .start()
        .await;
    let r = srv.get("/talk").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let cid = r.json()["cid"].as_str().unwrap().to_owned();

    let messages = [
        "printed first",
        "logged second",
        "printed third",
        "from a thread",
        "from a pool",
    ];
    let lines = eventually(Duration::from_secs(20), "the service's five lines", || {
        let mine: Vec<Value> = json_lines(&srv)
            .into_iter()
            .filter(|v| {
                v["target"] == "oxbus::python"
                    && messages.contains(&v["message"].as_str().unwrap_or(""))
            })
            .collect();
        async move { (mine.len() == messages.len()).then_some(mine) }
    })
    .await;
    // In the order the service wrote them, each with the invocation's cid and service.
    let got: Vec<&str> = lines
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(got, messages, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["cid"], cid.as_str(), "{line}");
        assert_eq!(line["service"], "chatty.talk", "{line}");
        assert_eq!(line["level"], "info", "{line}");
    }
    assert_eq!(lines[0]["fields"]["logger"], "stdout", "{}", lines[0]);
    assert_eq!(lines[1]["fields"]["logger"], "chatty.talk", "{}", lines[1]);
    assert_eq!(
        lines[1]["fields"]["extra"],
        serde_json::json!({"order": 7, "who": {"name": "Ann"}}),
        "{}",
        lines[1]
    );
    assert_eq!(lines[3]["fields"]["logger"], "chatty.work", "{}", lines[3]);
    // Nothing of it went the old way, through the worker's stdout pipe.
    assert!(
        !srv.log().contains("oxbus::worker::stdout"),
        "{}",
        srv.log()
    );
    srv.assert_no_errors(&[]);
}
