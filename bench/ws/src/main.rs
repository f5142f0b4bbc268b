//! bench/ws: the WebSocket load client of bench/websocket.py.
//!
//! `oxbus-ws-bench roundtrip URL CONNS SECONDS SIZE`: CONNS connections, each sending a
//! JSON text message of about SIZE bytes and waiting for the answer, again and again, for
//! SECONDS (after a 1 s warm-up); prints one JSON line: round trips/s, p50 and p99 in µs,
//! errors.
//!
//! `oxbus-ws-bench idle URL CONNS`: opens CONNS connections that send nothing (a reader per
//! connection answers the server's pings), prints `connected N` once all are open, and
//! holds them until stdin closes.

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn connect(url: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let host = rest.split('/').next().unwrap();
    for attempt in 0..50 {
        match TcpStream::connect(host).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                match tokio_tungstenite::client_async(url, tcp).await {
                    Ok((ws, _)) => return ws,
                    Err(e) if attempt == 49 => panic!("handshake with {url}: {e}"),
                    Err(_) => {}
                }
            }
            Err(e) if attempt == 49 => panic!("connect to {host}: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: oxbus-ws-bench roundtrip URL CONNS SECONDS SIZE | idle URL CONNS";
    match args.get(1).map(String::as_str) {
        Some("roundtrip") if args.len() == 6 => {
            let (url, conns, secs, size) = (
                args[2].clone(),
                args[3].parse::<usize>().expect(usage),
                args[4].parse::<u64>().expect(usage),
                args[5].parse::<usize>().expect(usage),
            );
            roundtrip(url, conns, secs, size).await
        }
        Some("idle") if args.len() == 4 => idle(&args[2], args[3].parse().expect(usage)).await,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    }
}

async fn roundtrip(url: String, conns: usize, secs: u64, size: usize) {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(size.saturating_sub(30));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut ws = connect(&url).await;
        let (measuring, stop, errors, pad) =
            (measuring.clone(), stop.clone(), errors.clone(), pad.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let msg = format!("{{\"c\":{c},\"n\":{n},\"pad\":\"{pad}\"}}");
                let t = Instant::now();
                if ws.send(Message::text(msg)).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            if !t.contains("\"echo\"") {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return lat;
                        }
                    }
                }
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let _ = ws.close(None).await;
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0
        } else {
            all[((all.len() - 1) as f64 * p) as usize]
        }
    };
    println!(
        "{{\"round_trips_per_s\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"count\": {}, \"errors\": {}}}",
        all.len() as f64 / wall,
        pct(0.50),
        pct(0.99),
        all.len(),
        errors.load(Ordering::Relaxed)
    );
}

async fn idle(url: &str, conns: usize) {
    let mut readers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let ws = connect(url).await;
        readers.push(tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            // Reading answers the server's pings (the library replies on the next write or
            // read); nothing is sent otherwise.
            while let Some(Ok(_)) = stream.next().await {}
        }));
    }
    println!("connected {conns}");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    for r in readers {
        r.abort();
    }
}
