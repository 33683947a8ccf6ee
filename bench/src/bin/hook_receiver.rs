//! An HTTP service for `emqx_web_hook` benchmarks: reads each request whole and answers 200
//! at once, or, with `--hang`, reads it and never answers (a service that has stopped
//! responding while its socket stays open).
//!
//!   target/release/hook_receiver --listen 127.0.0.1:8080 [--hang]
//!   BROKER_WEB_HOOK__URL=http://127.0.0.1:8080/hook target/release/broker
//!
//! HTTP/1.1 with hyper: the answers to pipelined requests that arrive together are written
//! together (hyper's `pipeline_flush`), as a server meant for pipelined clients does; the
//! benchmark's receiver shares the machine with the broker, and what it spends is not the
//! broker's. Prints `listening on ADDR` once it accepts connections, and, when stopped
//! (SIGTERM or SIGINT), how many requests it read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug)]
#[command(about = "An HTTP service for emqx_web_hook: 200 at once, or never (--hang)")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Never answer.
    #[arg(long)]
    hang: bool,
    /// Runtime worker threads (default: one a core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let runtime = bench::runtime(args.threads);
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    let hang = args.hang;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("local address"));
        let serve = async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let counted = counted.clone();
                let answer = move |request: Request<Incoming>| {
                    let counted = counted.clone();
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        counted.fetch_add(1, Ordering::Relaxed);
                        std::hint::black_box(body);
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                    }
                };
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .pipeline_flush(true)
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer)),
                );
            }
        };
        // A hanging request would hold a graceful shutdown forever: stop at the signal.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
        tokio::select! {
            () = serve => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    println!("read {} requests", requests.load(Ordering::Relaxed));
}
