//! Sessions as operators see them: `broker ctl sessions list|show` (EMQX's `Session(...)`
//! lines) and the management API's `/api/v4/sessions` (JSON with EMQX's field names).

use serde_json::{json, Value};

use super::Session;

/// What is shown of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    pub(crate) client_id: String,
    pub(crate) connected: bool,
    /// Session Expiry Interval in seconds (0: ends with its connection).
    pub(crate) expiry_interval: u32,
    /// Kept in the store (see `persist`).
    pub(crate) persistent: bool,
    pub(crate) subscriptions: usize,
    pub(crate) inflight: usize,
    pub(crate) mqueue_len: usize,
    pub(crate) awaiting_rel: usize,
    pub(crate) created_at_ms: u64,
}

impl SessionInfo {
    pub(crate) fn of(session: &Session) -> SessionInfo {
        let state = session.lock();
        SessionInfo {
            client_id: session.client_id.to_string(),
            connected: state.attachment.is_some(),
            expiry_interval: state.expiry_interval,
            persistent: state.durable.is_some(),
            subscriptions: state.subscriptions.len(),
            inflight: state.inflight.len(),
            mqueue_len: state.queue.len(),
            awaiting_rel: state.awaiting_rel.len(),
            created_at_ms: session.created_at_ms,
        }
    }

    /// EMQX's line: `Session(clientid=c1, clean_start=false, expiry_interval=7200, ...)`.
    pub(crate) fn line(&self) -> String {
        format!(
            "Session(clientid={}, clean_start={}, expiry_interval={}, persistent={}, subscriptions_count={}, \
             inflight={}, mqueue_len={}, awaiting_rel={}, connected={}, created_at={})",
            self.client_id,
            self.expiry_interval == 0,
            self.expiry_interval,
            self.persistent,
            self.subscriptions,
            self.inflight,
            self.mqueue_len,
            self.awaiting_rel,
            self.connected,
            self.created_at_ms / 1000
        )
    }

    /// The management API's object (EMQX's field names; `node` is added by the caller's node).
    pub(crate) fn json(&self, node: &str, limits: Limits) -> Value {
        json!({
            "clientid": self.client_id,
            "node": node,
            "clean_start": self.expiry_interval == 0,
            "expiry_interval": self.expiry_interval,
            "persistent": self.persistent,
            "connected": self.connected,
            "subscriptions_count": self.subscriptions,
            "max_subscriptions": limits.max_subscriptions,
            "inflight": self.inflight,
            "max_inflight": limits.max_inflight,
            "mqueue_len": self.mqueue_len,
            "max_mqueue": limits.max_mqueue,
            "awaiting_rel": self.awaiting_rel,
            "max_awaiting_rel": limits.max_awaiting_rel,
            "created_at": plugin_api::emqx::datetime_at(self.created_at_ms),
        })
    }
}

/// EMQX's `emqx_ctl clients` line of a connected client: `Client(c1, username=u,
/// peername=127.0.0.1:52354, clean_start=true, keepalive=60, session_expiry_interval=0,
/// subscriptions=1, inflight=0, awaiting_rel=0, mqueue_len=0, connected=true,
/// created_at=1764900000, connected_at=1764900000)`. EMQX's `delivered_msgs`, `enqueued_msgs`
/// and `dropped_msgs` are per-connection counters the broker does not keep, so they are
/// left out rather than shown as 0; `mqueue_len` stands where `enqueued_msgs` was.
pub(crate) fn client_line(client: &crate::client::ClientInfo, session: &SessionInfo) -> String {
    let username = if client.username.is_empty() { "undefined" } else { &client.username };
    let peername = client.peer_addr.map_or_else(|| "undefined".to_owned(), |p| p.to_string());
    format!(
        "Client({}, username={username}, peername={peername}, clean_start={}, keepalive={}, \
         session_expiry_interval={}, subscriptions={}, inflight={}, awaiting_rel={}, mqueue_len={}, connected=true, \
         created_at={}, connected_at={})",
        client.client_id,
        client.clean_start,
        client.keep_alive,
        session.expiry_interval,
        session.subscriptions,
        session.inflight,
        session.awaiting_rel,
        session.mqueue_len,
        session.created_at_ms / 1000,
        client.connected_at_ms / 1000,
    )
}

/// The node's limits shown beside each session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_subscriptions: usize,
    pub(crate) max_inflight: u16,
    pub(crate) max_mqueue: usize,
    pub(crate) max_awaiting_rel: u16,
}
