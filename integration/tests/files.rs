//! Issue 22, file-transfer channels, end to end: a channel (`PUT /v1/inbound/file/{name}`)
//! watching a temp folder, its files handed to a real service in real workers, then moved to
//! `processed/` or `failed/`. Each test has folders of its own.
//!
//! The service records each call (the file's name, folder, content, flags, and the server
//! process that handed it) as a JSON line in `seen.jsonl` beside the watched folder, so the
//! tests count what was handed, in which order, and how many times.

use oxbus_integration::api::{admin, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const SERVICES: &str = r#"import json
import os
import time

from oxbus import Service


class OnFile(Service):
    name = 'files.on_file'

    def handle(self):
        r = self.request.raw_request
        raw = r['raw_data']
        if isinstance(raw, bytes):
            raw = raw.decode('latin-1')
        if raw.startswith('slow'):
            time.sleep(0.05)
        entry = {'file_name': r['file_name'], 'relative_dir': r['relative_dir'],
                 'base_dir': r['base_dir'], 'watched_dir': r['watched_dir'],
                 'full_path': r['full_path'],
                 'channel': [self.channel.type, self.channel.name, r['channel_name']],
                 'raw_data': raw, 'has_raw_data': r['has_raw_data'], 'data': r['data'],
                 'has_data': r['has_data'], 'parse_error': r['parse_error'],
                 'redelivered': r['redelivered'], 'size': r['size'],
                 'server': os.getppid(), 'payload_is_raw_request': self.request.payload is r,
                 'exists': os.path.exists(r['full_path'])}
        seen = os.path.join(os.path.dirname(r['watched_dir'].rstrip('/')), 'seen.jsonl')
        with open(seen, 'a') as f:
            f.write(json.dumps(entry) + '\n')
        if raw.startswith('fail'):
            raise ValueError('failing on purpose: ' + r['file_name'])
"#;

fn env() -> Env {
    Env::new().workers(2).service("files_svc.py", SERVICES)
}

/// A fresh folder for one test: `<root>/in` is watched, `<root>/seen.jsonl` the record.
fn root(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "oxbus-files-{tag}-{}-{}",
        std::process::id(),
        next_id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("in")).unwrap();
    d
}

fn seen(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("seen.jsonl"))
        .unwrap_or_default()
        .lines()
        // A line being appended may be partial: only whole lines count.
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

async fn channel(srv: &Server, name: &str, def: Value) {
    let r = admin(srv, "PUT", &format!("/v1/inbound/file/{name}"), def).await;
    assert!(r.status == 201 || r.status == 200, "{}", text(&r));
}

/// This server's status of channel `name` (asserted to exist).
async fn stats(srv: &Server, name: &str) -> Value {
    let s = stats_or_null(srv, name).await;
    assert!(!s.is_null(), "no file channel {name} on this server");
    s
}

/// The stats, or Null while `srv` has not applied the channel yet.
async fn stats_or_null(srv: &Server, name: &str) -> Value {
    let r = admin(
        srv,
        "GET",
        &format!("/v1/inbound/file/{name}/stats"),
        Value::Null,
    )
    .await;
    if r.status == 200 {
        r.json()
    } else {
        assert_eq!(r.status, 404, "{}", text(&r));
        Value::Null
    }
}

async fn holding(srv: &Server, name: &str) {
    eventually(WAIT, &format!("{name} holding"), || async {
        (stats(srv, name).await["state"] == "holding").then_some(())
    })
    .await;
}

fn write(path: &Path, content: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
}

/// Waits until `n` calls are recorded and `dir` holds `files` entries.
async fn handled(root: &Path, n: usize, dir: &Path, files: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{n} files handled"), || async {
        // The folder first: a file is moved only after its call was recorded, so the calls
        // read after it include every file it holds (read the other way round, a file
        // handled in between is in the folder but not in the calls).
        let moved = count(dir) >= files;
        let s = seen(root);
        (moved && s.len() >= n).then_some(s)
    })
    .await
}

#[tokio::test]
async fn a_slow_writer_is_waited_for_and_the_service_sees_zatos_keys() {
    let srv = env().start().await;
    let r = root("slow");
    let dir = r.join("in");
    // Bad definitions are refused with the field named; nothing stored.
    for (bad, says) in [
        (json!({"service": "s", "directories": ["in"]}), "absolute"),
        (
            json!({"service": "s", "directories": [dir], "parse_with": "yaml"}),
            "parse_with",
        ),
        (
            json!({"service": "s", "directories": [dir], "bogus": 1}),
            "unknown field",
        ),
    ] {
        let resp = admin(&srv, "PUT", "/v1/inbound/file/bad", bad.clone()).await;
        assert_eq!(resp.status, 400, "{bad}: {}", text(&resp));
        assert!(text(&resp).contains(says), "{bad}: {}", text(&resp));
    }
    channel(
        &srv,
        "slow",
        json!({"service": "files.on_file", "directories": [dir], "quiet_ms": 1500,
               "patterns": ["*.csv"], "parse_on_pickup": true, "parse_with": "csv",
               "recursive": true}),
    )
    .await;
    holding(&srv, "slow").await;
    // A writer that keeps the file open and writes a line every 300 ms for 3 s: pauses
    // shorter than the quiet time, so the file is taken only once it is closed.
    std::fs::create_dir_all(dir.join("2026")).unwrap();
    let path = dir.join("2026/orders.csv");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for i in 0..10 {
                writeln!(f, "{i},item-{i}").unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Not ours: another pattern, a hidden temp file.
    write(&dir.join("notes.txt"), "x");
    write(&dir.join(".orders.csv.part"), "x");
    writer.join().unwrap();
    let processed = dir.join("processed/2026");
    let s = handled(&r, 1, &processed, 1).await;
    let e = &s[0];
    let want: String = (0..10).map(|i| format!("{i},item-{i}\n")).collect();
    assert_eq!(e["raw_data"], want, "the whole file, once complete: {e}");
    assert_eq!(e["file_name"], "orders.csv");
    assert_eq!(e["relative_dir"], "2026");
    assert_eq!(
        e["base_dir"],
        dir.join("2026").to_str().unwrap(),
        "Zato's: the file's folder"
    );
    assert_eq!(e["watched_dir"], dir.to_str().unwrap());
    assert_eq!(e["full_path"], path.to_str().unwrap());
    assert_eq!(e["channel"], json!(["file-transfer", "slow", "slow"]));
    assert_eq!(e["has_raw_data"], true);
    assert_eq!(e["has_data"], true);
    assert_eq!(e["data"][9], json!(["9", "item-9"]));
    assert_eq!(e["redelivered"], false);
    assert_eq!(e["payload_is_raw_request"], true);
    assert_eq!(e["exists"], true, "still in place while the service runs");
    assert_eq!(
        std::fs::read_to_string(processed.join("orders.csv")).unwrap(),
        want
    );
    assert!(!path.exists());
    assert!(dir.join("notes.txt").exists() && dir.join(".orders.csv.part").exists());
    // The same name again is another file: handled again, kept beside the first.
    write(&path, "1,again\n");
    handled(&r, 2, &processed, 2).await;
    assert!(processed.join("orders.csv.1").exists());
    let st = stats(&srv, "slow").await;
    assert_eq!(
        (st["done"].as_u64(), st["failed"].as_u64()),
        (Some(2), Some(0)),
        "{st}"
    );
    // The CLI's table, the list, and the export carry the channel.
    let out = srv.cli(&["inbound", "stats", "file", "slow"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("holding") && table.contains("slow"),
        "{table}"
    );
    let listed = admin(&srv, "GET", "/v1/inbound/file", Value::Null)
        .await
        .json();
    assert_eq!(listed["file"][0]["name"], "slow");
    assert_eq!(listed["file"][0]["status"]["state"], "holding");
    let export = admin(&srv, "GET", "/v1/config", Value::Null).await;
    assert!(text(&export).contains("channel_file"), "{}", text(&export));
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&r);
}

#[tokio::test]
async fn failures_go_to_failed_with_the_reason_beside_them() {
    let srv = env().start().await;
    let r = root("fail");
    let dir = r.join("in");
    channel(
        &srv,
        "fail",
        // Ten minutes of quiet time: a file handed sooner was seen closing.
        json!({"service": "files.on_file", "directories": [dir], "max_bytes": 100,
               "quiet_ms": 600_000}),
    )
    .await;
    holding(&srv, "fail").await;
    write(&dir.join("bad.txt"), "fail here");
    write(&dir.join("big.txt"), &"x".repeat(101));
    write(&dir.join("good.txt"), "fine");
    let failed = dir.join("failed");
    handled(&r, 2, &failed, 4).await;
    eventually(WAIT, "good.txt processed", || async {
        dir.join("processed/good.txt").exists().then_some(())
    })
    .await;
    let reason = std::fs::read_to_string(failed.join("bad.txt.error.txt")).unwrap();
    assert!(
        reason.contains("failing on purpose: bad.txt") && reason.contains("Traceback"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(failed.join("bad.txt")).unwrap(),
        "fail here"
    );
    let reason = std::fs::read_to_string(failed.join("big.txt.error.txt")).unwrap();
    assert!(reason.contains("max_bytes"), "{reason}");
    // The big file never reached the service.
    assert!(seen(&r).iter().all(|e| e["file_name"] != "big.txt"));
    let st = stats(&srv, "fail").await;
    assert_eq!(
        (st["done"].as_u64(), st["failed"].as_u64()),
        (Some(1), Some(2)),
        "{st}"
    );
    let page = oxbus_integration::prom::scrape(&srv).await;
    let n = |outcome| {
        page.get_or_zero(
            "oxbus_inbound_messages_total",
            &[("type", "file"), ("channel", "fail"), ("outcome", outcome)],
        )
    };
    assert_eq!((n("done"), n("failed")), (1.0, 2.0));
    let _ = std::fs::remove_dir_all(&r);
}

#[tokio::test]
async fn a_move_that_fails_is_done_later_without_a_second_call() {
    let srv = env().start().await;
    let r = root("move");
    let dir = r.join("in");
    // The processed folder cannot be made while a plain file holds its parent's name.
    let blocker = r.join("blocker");
    std::fs::write(&blocker, "not a folder").unwrap();
    channel(
        &srv,
        "move",
        json!({"service": "files.on_file", "directories": [dir],
               "processed_dir": blocker.join("processed")}),
    )
    .await;
    holding(&srv, "move").await;
    write(&dir.join("m.txt"), "move me");
    handled(&r, 1, &dir, 1).await;
    let err = eventually(WAIT, "the failed move reported", || async {
        stats(&srv, "move").await["last_error"]
            .as_str()
            .filter(|e| e.contains("could not be moved"))
            .map(str::to_owned)
    })
    .await;
    assert!(err.contains("m.txt"), "{err}");
    assert!(
        dir.join("m.txt").exists(),
        "left in place, its outcome recorded"
    );
    // Fixed: the next look moves it, without calling the service again.
    std::fs::remove_file(&blocker).unwrap();
    eventually(WAIT, "moved", || async {
        blocker.join("processed/m.txt").exists().then_some(())
    })
    .await;
    assert!(!dir.join("m.txt").exists());
    // A second call would have come before the move (claimed again, handed, recorded).
    assert_eq!(seen(&r).len(), 1, "handed once");
    let st = stats(&srv, "move").await;
    assert_eq!(st["done"], 1, "{st}");
    let _ = std::fs::remove_dir_all(&r);
}

/// Names in the order handled, and how many times each.
fn tally(s: &[Value]) -> (Vec<String>, HashMap<String, usize>) {
    let names: Vec<String> = s
        .iter()
        .map(|e| e["file_name"].as_str().unwrap().to_owned())
        .collect();
    let mut n = HashMap::new();
    for x in &names {
        *n.entry(x.clone()).or_insert(0) += 1;
    }
    (names, n)
}

#[tokio::test]
async fn ten_thousand_files_are_handed_exactly_once_in_order() {
    let srv = env().start().await;
    let r = root("many");
    let dir = r.join("in");
    channel(
        &srv,
        "many",
        json!({"service": "files.on_file", "directories": [dir], "after": "delete"}),
    )
    .await;
    holding(&srv, "many").await;
    const N: usize = 10_000;
    for i in 0..N {
        write(&dir.join(format!("f-{i:05}.txt")), &format!("file {i}\n"));
    }
    let s = eventually(WAIT * 3, "10000 files handled", || async {
        let s = seen(&r);
        (s.len() >= N).then_some(s)
    })
    .await;
    eventually(WAIT, "every file deleted", || async {
        (count(&dir) == 0).then_some(())
    })
    .await;
    let (names, n) = tally(&s);
    assert_eq!(s.len(), N, "no file twice");
    assert!(n.values().all(|c| *c == 1));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "handed in the order written");
    assert!(s.iter().all(|e| e["redelivered"] == false));
    assert!(!dir.join("processed").exists(), "after = delete");
    let _ = std::fs::remove_dir_all(&r);
}

#[tokio::test]
async fn a_restart_in_the_middle_loses_nothing_and_repeats_nothing() {
    // PostgreSQL: a server killed with SIGKILL leaves its row, which a SQLite store (one
    // server) would hold against the next start until it is stale.
    let (env, _db) = env().postgres_store();
    let srv = env.start().await;
    let r = root("restart");
    let dir = r.join("in");
    channel(
        &srv,
        "restart",
        json!({"service": "files.on_file", "directories": [dir]}),
    )
    .await;
    holding(&srv, "restart").await;
    const N: usize = 300;
    for i in 0..N {
        write(&dir.join(format!("s-{i:04}.txt")), "slow");
    }
    // A graceful restart (SIGTERM) part-way: the file being handled finishes and is
    // recorded, the rest wait for the next start.
    eventually(WAIT, "some handled", || async {
        (seen(&r).len() >= 50).then_some(())
    })
    .await;
    let srv = srv.restart().await;
    let processed = dir.join("processed");
    let s = handled(&r, N, &processed, N).await;
    let (_, n) = tally(&s);
    assert_eq!(s.len(), N, "nothing twice after a graceful restart");
    assert_eq!(n.len(), N, "nothing lost");
    assert!(s.iter().all(|e| e["redelivered"] == false));
    assert_eq!(count(&processed), N);

    // kill -9 part-way: nothing lost; a file handed again only when its outcome was never
    // recorded, and then marked redelivered.
    let before = s.len();
    for i in 0..N {
        write(&dir.join(format!("k-{i:04}.txt")), "slow");
    }
    eventually(WAIT, "some handled", || async {
        (seen(&r).len() >= before + 50).then_some(())
    })
    .await;
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGKILL);
    srv.wait_exit(Duration::from_secs(10));
    // The workers notice their server is gone and exit; the new server starts clean.
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    let s = handled(&r, 2 * N, &processed, 2 * N).await;
    let k: Vec<&Value> = s[before..].iter().collect();
    let mut by_name: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in &k {
        by_name
            .entry(e["file_name"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    let mut listed: Vec<String> = std::fs::read_dir(&processed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("k-"))
        .collect();
    listed.sort();
    let missing: Vec<String> = (0..N)
        .map(|i| format!("k-{i:04}.txt"))
        .filter(|n| !by_name.contains_key(n.as_str()))
        .collect();
    let twice: Vec<&&str> = by_name
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        by_name.len(),
        N,
        "nothing lost: missing {missing:?}, twice {twice:?}, in processed {} k- files, left {:?}; log:\n{}",
        listed.len(),
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        srv.log()
    );
    let twice: Vec<_> = by_name.iter().filter(|(_, v)| v.len() > 1).collect();
    for (name, v) in &twice {
        assert_eq!(v.len(), 2, "{name}: {v:?}");
        assert_eq!(v[1]["redelivered"], true, "{name}: {v:?}");
    }
    // With parallel = 1, at most the batch whose outcomes were not recorded yet.
    assert!(twice.len() <= 128, "{} handed twice", twice.len());
    assert_eq!(count(&processed), 2 * N);
    let _ = std::fs::remove_dir_all(&r);
    drop(srv);
}

#[tokio::test]
async fn two_servers_sharing_a_folder_never_both_take_a_file() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let a = first.start().await;
    let b = env().set("store", "url", &url).start().await;
    let r = root("shared");
    let dir = r.join("in");
    channel(
        &a,
        "shared",
        json!({"service": "files.on_file", "directories": [dir], "quiet_ms": 1000}),
    )
    .await;
    // One holds the lease, the other stands by, naming the holder.
    let (holder, standby) = eventually(WAIT, "one holder, one standby", || async {
        let (sa, sb) = (
            stats_or_null(&a, "shared").await,
            stats_or_null(&b, "shared").await,
        );
        match (sa["state"].as_str(), sb["state"].as_str()) {
            (Some("holding"), Some("standby")) => Some((&a, &b)),
            (Some("standby"), Some("holding")) => Some((&b, &a)),
            _ => None,
        }
    })
    .await;
    let sb = stats(standby, "shared").await;
    assert_eq!(sb["holder"], stats(holder, "shared").await["holder"]);
    const N: usize = 1000;
    for i in 0..N {
        write(&dir.join(format!("c-{i:04}.txt")), "x");
    }
    let processed = dir.join("processed");
    let s = handled(&r, N, &processed, N).await;
    let (_, n) = tally(&s);
    assert_eq!(s.len(), N, "no file taken twice");
    assert_eq!(n.len(), N);
    let servers: std::collections::HashSet<u64> =
        s.iter().map(|e| e["server"].as_u64().unwrap()).collect();
    assert_eq!(servers.len(), 1, "one server took them all");
    // The holder freezes (SIGSTOP) past its lease: the other takes over; woken up, the old
    // holder sees its lease gone and takes nothing.
    holder.signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..50 {
        write(&dir.join(format!("e-{i:04}.txt")), "x");
    }
    let s = handled(&r, N + 50, &processed, N + 50).await;
    let frozen = holder.pid() as u64;
    assert!(
        s[N..].iter().all(|e| e["server"] != frozen),
        "handed by the standby"
    );
    assert_eq!(stats(standby, "shared").await["state"], "holding");
    holder.signal(nix::sys::signal::Signal::SIGCONT);
    eventually(WAIT, "the woken server stands by", || async {
        (stats_or_null(holder, "shared").await["state"] == "standby").then_some(())
    })
    .await;
    for i in 0..50 {
        write(&dir.join(format!("g-{i:04}.txt")), "x");
    }
    let s = handled(&r, N + 100, &processed, N + 100).await;
    let (_, n) = tally(&s);
    assert_eq!(s.len(), N + 100, "no file taken twice");
    assert_eq!(n.len(), N + 100);
    assert!(s[N + 50..].iter().all(|e| e["server"] != frozen));
    // The new holder dies: the first takes over once the lease expires, nothing lost.
    let (holder, standby) = (standby, holder);
    let holder_pid = holder.pid();
    holder.signal(nix::sys::signal::Signal::SIGKILL);
    for i in 0..100 {
        write(&dir.join(format!("d-{i:04}.txt")), "x");
    }
    let s = handled(&r, N + 200, &processed, N + 200).await;
    let late: std::collections::HashSet<u64> = s[N + 100..]
        .iter()
        .map(|e| e["server"].as_u64().unwrap())
        .collect();
    assert!(!late.contains(&(holder_pid as u64)), "{late:?}");
    assert_eq!(s.len(), N + 200);
    assert_eq!(stats(standby, "shared").await["state"], "holding");
    let _ = std::fs::remove_dir_all(&r);
}
