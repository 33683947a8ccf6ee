//! A gRPC HookProvider server (`emqx.exhook.v2`, from `emqx_exhook`'s own `.proto`) for the
//! benchmarks: `OnProviderLoaded` asks for `message.publish` on every topic, and each
//! `OnMessagePublish` is answered at once with `CONTINUE` and the message as it came (a server
//! that looks at every message and changes none). Every other rpc answers `UNIMPLEMENTED`;
//! the broker calls only the hooks a server asks for.
//!
//!   target/release/exhook_server --listen 127.0.0.1:9000
//!   BROKER_EXHOOK__SERVERS='[{ name = "bench", url = "http://127.0.0.1:9000" }]' target/release/broker
//!
//! Prints `listening on ADDR` once it accepts connections, and, when stopped (SIGTERM or
//! SIGINT), how many `OnMessagePublish` calls it answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, unreachable_pub, dead_code)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/emqx.exhook.v2.rs"));
}

use pb::hook_provider_server::{HookProvider, HookProviderServer};
use pb::valued_response::{ResponsedType, Value};

#[derive(Parser, Debug)]
#[command(about = "An emqx.exhook.v2 HookProvider that asks for message.publish and changes nothing")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Topic filters of the `message.publish` hook it asks for (none: every topic).
    #[arg(long)]
    topic: Vec<String>,
    /// Runtime worker threads (default: one a core).
    #[arg(long)]
    threads: Option<usize>,
}

struct Provider {
    topics: Vec<String>,
    publishes: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl HookProvider for Provider {
    async fn on_provider_loaded(
        &self,
        _request: Request<pb::ProviderLoadedRequest>,
    ) -> Result<Response<pb::LoadedResponse>, Status> {
        let hooks = vec![pb::HookSpec { name: "message.publish".to_owned(), topics: self.topics.clone() }];
        Ok(Response::new(pb::LoadedResponse { hooks }))
    }

    async fn on_provider_unloaded(
        &self,
        _request: Request<pb::ProviderUnloadedRequest>,
    ) -> Result<Response<pb::EmptySuccess>, Status> {
        Ok(Response::new(pb::EmptySuccess {}))
    }

    async fn on_message_publish(
        &self,
        request: Request<pb::MessagePublishRequest>,
    ) -> Result<Response<pb::ValuedResponse>, Status> {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        let value = request.into_inner().message.map(Value::Message);
        Ok(Response::new(pb::ValuedResponse { r#type: ResponsedType::Continue as i32, value }))
    }
}

fn main() {
    let args = Args::parse();
    let runtime = bench::runtime(args.threads);
    let publishes = Arc::new(AtomicU64::new(0));
    let provider = Provider { topics: args.topic.clone(), publishes: publishes.clone() };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("local address"));
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        tonic::transport::Server::builder()
            .add_service(HookProviderServer::new(provider))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .expect("serve");
    });
    println!("answered {} OnMessagePublish calls", publishes.load(Ordering::Relaxed));
}
