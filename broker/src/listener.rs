//! Listeners: accept client connections and give each its own task (`connection::serve`).
//! Past `mqtt.max_connections` open connections, a new one is closed at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::node::Node;

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts MQTT over TCP forever.
pub(crate) async fn serve_tcp(listener: TcpListener, node: Arc<Node>) {
    let open = Arc::new(AtomicUsize::new(0));
    let max = node.zone.max_connections;
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                if open.fetch_add(1, Ordering::Relaxed) >= max {
                    open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "connection refused: mqtt.max_connections ({max}) reached");
                    continue;
                }
                let guard = OpenConnection(open.clone());
                let _ = socket.set_nodelay(true);
                let node = node.clone();
                tokio::spawn(async move {
                    crate::connection::serve(node, socket, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
