//! An HTTP service for `emqx_web_hook` benchmarks: reads each request whole and answers 200
//! at once, or, with `--hang`, reads it and never answers (a service that has stopped
//! responding while its socket stays open).
//!
//!   target/release/hook_receiver --listen 127.0.0.1:8080 [--hang]
//!   BROKER_WEB_HOOK__URL=http://127.0.0.1:8080/hook target/release/broker
//!
//! Prints `listening on ADDR` once it accepts connections, and, when stopped (SIGTERM or
//! SIGINT), how many requests it read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;
use clap::Parser;

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
        let handler = move |body: Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                std::hint::black_box(body);
                if hang {
                    std::future::pending::<()>().await;
                }
                StatusCode::OK
            }
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("local address"));
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let app = Router::new().fallback(handler);
        // A hanging request would hold a graceful shutdown forever: stop at the signal.
        tokio::select! {
            served = axum::serve(listener, app) => served.expect("serve"),
            _ = stop => {}
        }
    });
    println!("read {} requests", requests.load(Ordering::Relaxed));
}
