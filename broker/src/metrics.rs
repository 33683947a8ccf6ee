//! The broker's counters, named and counted as EMQX's `emqx_metrics` does: bytes and packets
//! by type as they cross the wire, messages by QoS, drops by cause, client and session
//! lifecycle. Read by `$SYS`, `ctl`, telemetry and exporters through `Host::metrics`.
//!
//! Counting is on every connection's hot path, so the counters are sharded: each thread adds
//! to its own cache-line-aligned row of relaxed atomics, and a reader sums the rows. A
//! connection task never contends with another worker thread's for a counter.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::mqtt::frame::kind;

macro_rules! metrics {
    ($($variant:ident => $name:literal,)*) => {
        /// One counter. The name is EMQX's.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Metric {
            $($variant,)*
        }

        impl Metric {
            /// Every counter, in EMQX's order.
            pub(crate) const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            /// EMQX's name (`messages.received`).
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }
        }
    };
}

metrics! {
    BytesReceived => "bytes.received",
    BytesSent => "bytes.sent",
    PacketsReceived => "packets.received",
    PacketsSent => "packets.sent",
    PacketsConnectReceived => "packets.connect.received",
    PacketsConnackSent => "packets.connack.sent",
    PacketsConnackError => "packets.connack.error",
    PacketsConnackAuthError => "packets.connack.auth_error",
    PacketsPublishReceived => "packets.publish.received",
    PacketsPublishSent => "packets.publish.sent",
    PacketsPublishError => "packets.publish.error",
    PacketsPublishAuthError => "packets.publish.auth_error",
    PacketsPubackReceived => "packets.puback.received",
    PacketsPubackSent => "packets.puback.sent",
    PacketsPubackMissed => "packets.puback.missed",
    PacketsPubrecReceived => "packets.pubrec.received",
    PacketsPubrecSent => "packets.pubrec.sent",
    PacketsPubrecMissed => "packets.pubrec.missed",
    PacketsPubrelReceived => "packets.pubrel.received",
    PacketsPubrelSent => "packets.pubrel.sent",
    PacketsPubrelMissed => "packets.pubrel.missed",
    PacketsPubcompReceived => "packets.pubcomp.received",
    PacketsPubcompSent => "packets.pubcomp.sent",
    PacketsPubcompMissed => "packets.pubcomp.missed",
    PacketsSubscribeReceived => "packets.subscribe.received",
    PacketsSubscribeError => "packets.subscribe.error",
    PacketsSubscribeAuthError => "packets.subscribe.auth_error",
    PacketsSubackSent => "packets.suback.sent",
    PacketsUnsubscribeReceived => "packets.unsubscribe.received",
    PacketsUnsubackSent => "packets.unsuback.sent",
    PacketsPingreqReceived => "packets.pingreq.received",
    PacketsPingrespSent => "packets.pingresp.sent",
    PacketsDisconnectReceived => "packets.disconnect.received",
    PacketsDisconnectSent => "packets.disconnect.sent",
    PacketsAuthReceived => "packets.auth.received",
    PacketsAuthSent => "packets.auth.sent",
    MessagesReceived => "messages.received",
    MessagesSent => "messages.sent",
    MessagesQos0Received => "messages.qos0.received",
    MessagesQos0Sent => "messages.qos0.sent",
    MessagesQos1Received => "messages.qos1.received",
    MessagesQos1Sent => "messages.qos1.sent",
    MessagesQos2Received => "messages.qos2.received",
    MessagesQos2Sent => "messages.qos2.sent",
    MessagesPublish => "messages.publish",
    MessagesDropped => "messages.dropped",
    MessagesDroppedNoSubscribers => "messages.dropped.no_subscribers",
    MessagesForward => "messages.forward",
    MessagesDelivered => "messages.delivered",
    MessagesAcked => "messages.acked",
    DeliveryDropped => "delivery.dropped",
    DeliveryDroppedNoLocal => "delivery.dropped.no_local",
    DeliveryDroppedTooLarge => "delivery.dropped.too_large",
    DeliveryDroppedQos0Msg => "delivery.dropped.qos0_msg",
    DeliveryDroppedQueueFull => "delivery.dropped.queue_full",
    DeliveryDroppedExpired => "delivery.dropped.expired",
    ClientConnect => "client.connect",
    ClientConnack => "client.connack",
    ClientConnected => "client.connected",
    ClientAuthenticate => "client.authenticate",
    ClientCheckAcl => "client.check_acl",
    ClientSubscribe => "client.subscribe",
    ClientUnsubscribe => "client.unsubscribe",
    ClientDisconnected => "client.disconnected",
    SessionCreated => "session.created",
    SessionResumed => "session.resumed",
    SessionTakeovered => "session.takeovered",
    SessionDiscarded => "session.discarded",
    SessionTerminated => "session.terminated",
    ClientAclCacheHit => "client.acl.cache_hit",
    // Not EMQX's (its overload protection counts other things, under the same prefix).
    OverloadProtectionPublisherHeld => "overload_protection.publisher_held",
}

const COUNT: usize = Metric::ALL.len();
/// Rows of counters; threads beyond this many share rows (still correct, then contended).
const SHARDS: usize = 16;

/// One thread's row, on cache lines of its own.
#[repr(align(128))]
struct Shard([AtomicU64; COUNT]);

impl Shard {
    #[inline]
    fn add(&self, metric: Metric, n: u64) {
        self.0[metric as usize].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    fn inc(&self, metric: Metric) {
        self.add(metric, 1);
    }
}

/// The counters.
pub(crate) struct Metrics {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.all()).finish()
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == usize::MAX {
            index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(index);
        }
        index
    })
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics { shards: (0..SHARDS).map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0)))).collect() }
    }
}

impl Metrics {
    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self, metric: Metric) {
        self.add(metric, 1);
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, metric: Metric, n: u64) {
        self.shard().add(metric, n);
    }

    /// This thread's shard (one thread-local read, for all the counters a packet moves).
    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// The counter's value now.
    pub(crate) fn get(&self, metric: Metric) -> u64 {
        self.shards.iter().map(|shard| shard.0[metric as usize].load(Ordering::Relaxed)).sum()
    }

    /// Every counter with its name.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Metric::ALL.iter().map(|&metric| (metric.name(), self.get(metric)))
    }

    /// A packet read from a client (EMQX's `inc_recv`); PUBLISH also counts a message.
    pub(crate) fn packet_received(&self, packet_kind: u8, qos: u8) {
        let shard = self.shard();
        shard.inc(Metric::PacketsReceived);
        let metric = match packet_kind {
            kind::CONNECT => Metric::PacketsConnectReceived,
            kind::PUBLISH => {
                shard.inc(Metric::MessagesReceived);
                shard.inc(qos_metric(qos, false));
                Metric::PacketsPublishReceived
            }
            kind::PUBACK => Metric::PacketsPubackReceived,
            kind::PUBREC => Metric::PacketsPubrecReceived,
            kind::PUBREL => Metric::PacketsPubrelReceived,
            kind::PUBCOMP => Metric::PacketsPubcompReceived,
            kind::SUBSCRIBE => Metric::PacketsSubscribeReceived,
            kind::UNSUBSCRIBE => Metric::PacketsUnsubscribeReceived,
            kind::PINGREQ => Metric::PacketsPingreqReceived,
            kind::DISCONNECT => Metric::PacketsDisconnectReceived,
            kind::AUTH => Metric::PacketsAuthReceived,
            _ => return,
        };
        shard.inc(metric);
    }

    /// A packet other than PUBLISH written to a client (EMQX's `inc_sent`). `code` is the
    /// reason code of an acknowledgement (0 when it has none).
    pub(crate) fn packet_sent(&self, packet_kind: u8, code: u8) {
        let shard = self.shard();
        shard.inc(Metric::PacketsSent);
        let metric = match packet_kind {
            kind::CONNACK => {
                if code != 0 {
                    shard.inc(Metric::PacketsConnackError);
                }
                // 3.1.1: 4 bad user name or password, 5 not authorised; MQTT 5: 0x86, 0x87.
                if matches!(code, 0x04 | 0x05 | 0x86 | 0x87) {
                    shard.inc(Metric::PacketsConnackAuthError);
                }
                Metric::PacketsConnackSent
            }
            kind::PUBACK | kind::PUBREC => {
                if code >= 0x80 {
                    shard.inc(Metric::PacketsPublishError);
                }
                if code == 0x87 {
                    shard.inc(Metric::PacketsPublishAuthError);
                }
                if packet_kind == kind::PUBACK {
                    Metric::PacketsPubackSent
                } else {
                    Metric::PacketsPubrecSent
                }
            }
            kind::PUBREL => Metric::PacketsPubrelSent,
            kind::PUBCOMP => Metric::PacketsPubcompSent,
            kind::SUBACK => Metric::PacketsSubackSent,
            kind::UNSUBACK => Metric::PacketsUnsubackSent,
            kind::PINGRESP => Metric::PacketsPingrespSent,
            kind::DISCONNECT => Metric::PacketsDisconnectSent,
            kind::AUTH => Metric::PacketsAuthSent,
            _ => return,
        };
        shard.inc(metric);
    }

    /// `n` PUBLISH packets written to a client at `qos`.
    pub(crate) fn publishes_sent(&self, qos: u8, n: u64) {
        let shard = self.shard();
        shard.add(Metric::PacketsSent, n);
        shard.add(Metric::PacketsPublishSent, n);
        shard.add(Metric::MessagesSent, n);
        shard.add(qos_metric(qos, true), n);
    }
}

fn qos_metric(qos: u8, sent: bool) -> Metric {
    match (qos, sent) {
        (0, false) => Metric::MessagesQos0Received,
        (1, false) => Metric::MessagesQos1Received,
        (_, false) => Metric::MessagesQos2Received,
        (0, true) => Metric::MessagesQos0Sent,
        (1, true) => Metric::MessagesQos1Sent,
        (_, true) => Metric::MessagesQos2Sent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_threads_row() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| metrics.inc(Metric::MessagesReceived)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(metrics.get(Metric::MessagesReceived), 20_000);
        assert_eq!(metrics.get(Metric::MessagesSent), 0);
    }

    #[test]
    fn names_are_emqx_names_and_unique() {
        let names: std::collections::HashSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        assert!(names.contains("packets.connack.auth_error") && names.contains("delivery.dropped.queue_full"));
    }

    #[test]
    fn a_refused_connack_counts_as_error_and_auth_error() {
        let metrics = Metrics::default();
        metrics.packet_sent(kind::CONNACK, 0x87);
        metrics.packet_sent(kind::CONNACK, 0);
        assert_eq!(metrics.get(Metric::PacketsConnackSent), 2);
        assert_eq!(metrics.get(Metric::PacketsConnackError), 1);
        assert_eq!(metrics.get(Metric::PacketsConnackAuthError), 1);
        assert_eq!(metrics.get(Metric::PacketsSent), 2);
    }
}
