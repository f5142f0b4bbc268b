//! `echo_upstream`: a small, fast HTTP/1.1 upstream for the outgoing-connections benchmark
//! (bench/outgoing.sh) — it answers every request, whatever its method and path, with 200 and
//! the same small JSON object (`{"ok":true,"source":"echo_upstream","n":42}`), keep-alive.
//!
//! Usage: `echo_upstream [--listen 127.0.0.1:0] [--threads 1]`. It prints one line
//! `listening on ADDR` on stdout once it accepts connections, then serves until killed.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;

const BODY: &[u8] = br#"{"ok":true,"source":"echo_upstream","n":42}"#;

async fn answer(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn usage() -> ! {
    eprintln!("usage: echo_upstream [--listen HOST:PORT] [--threads N]");
    std::process::exit(2)
}

fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()
    .expect("a tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("echo_upstream: cannot listen on {listen}: {e}");
                std::process::exit(1)
            }
        };
        let addr = listener.local_addr().expect("a bound address");
        println!("listening on {addr}");
        std::io::stdout().flush().ok();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("echo_upstream: accept: {e}");
                    continue;
                }
            };
            stream.set_nodelay(true).ok();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
