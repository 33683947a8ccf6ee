//! Who a connected client is, as its CONNECT said: what hook events tell plugins and what
//! the management API lists.

use std::net::SocketAddr;
use std::sync::Arc;

use plugin_api::abi::{RawBytes, RawBytesWriter, RawEvent, RawStr, RawWriter};
use plugin_api::Hook;

use crate::mqtt::Version;

/// One client connection's identity.
#[derive(Debug)]
pub(crate) struct ClientInfo {
    /// The client id (the assigned one when the client sent none).
    pub(crate) client_id: Arc<str>,
    /// Empty when the client gave none.
    pub(crate) username: Box<str>,
    /// `ip:port`; empty for the broker itself.
    pub(crate) peer: Box<str>,
    pub(crate) peer_addr: Option<SocketAddr>,
    /// The local port of the listener the client connected to (EMQX's `sockport`); 0 for
    /// the broker itself.
    pub(crate) sockport: u16,
    pub(crate) version: Version,
    pub(crate) keep_alive: u16,
    pub(crate) clean_start: bool,
    /// Session Expiry Interval in seconds (MQTT 5, or the configured one for 3.1.1).
    pub(crate) expiry_interval: u32,
    /// When the CONNECT arrived, in milliseconds since the Unix epoch.
    pub(crate) connected_at_ms: u64,
}

impl ClientInfo {
    /// The broker itself, as the publisher of the messages plugins publish.
    pub(crate) fn broker() -> ClientInfo {
        ClientInfo {
            client_id: Arc::from(""),
            username: "".into(),
            peer: "".into(),
            peer_addr: None,
            sockport: 0,
            version: Version::V5,
            keep_alive: 0,
            clean_start: true,
            expiry_interval: 0,
            connected_at_ms: 0,
        }
    }

    /// The client whose will a persistent session kept across a restart: what the store has
    /// of it (its id, username and address), its session persistent, its protocol MQTT 5 (a
    /// delayed will is MQTT 5's).
    pub(crate) fn of_kept_will(client_id: Arc<str>, username: &str, peer: &str) -> ClientInfo {
        ClientInfo {
            client_id,
            username: username.into(),
            peer: peer.into(),
            peer_addr: peer.parse().ok(),
            clean_start: false,
            ..ClientInfo::broker()
        }
    }

    /// A hook event about this client, timestamped `timestamp_ms`; the caller fills in the
    /// fields of the hook.
    pub(crate) fn event(&self, hook: Hook, timestamp_ms: u64) -> RawEvent {
        RawEvent {
            size: std::mem::size_of::<RawEvent>() as u32,
            hook: hook as u32,
            client_id: RawStr::new(&self.client_id),
            username: RawStr::new(&self.username),
            password: RawBytes::EMPTY,
            peer: RawStr::new(&self.peer),
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            qos: 0,
            retain: 0,
            proto_ver: self.version.level(),
            clean_start: self.clean_start as u8,
            keepalive: self.keep_alive,
            packet_id: 0,
            return_code: 0,
            expiry_interval: self.expiry_interval,
            acl_action: 0,
            reason: RawStr::EMPTY,
            timestamp_ms,
            properties: RawBytes::EMPTY,
            message_expiry: 0,
            sub_options: 0,
            sub_new: 0,
            sockport: self.sockport,
            rewrite: RawWriter::DISCARD,
            rewrite_payload: RawBytesWriter::DISCARD,
            rewrite_qos: RawBytesWriter::DISCARD,
            ticket: std::ptr::null_mut(),
            answer: None,
        }
    }
}
