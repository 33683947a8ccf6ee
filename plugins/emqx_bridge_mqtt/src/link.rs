//! The connection to the remote broker: rumqttc's client and event loop, MQTT 3.1.1 or 5, behind
//! one small interface.
//!
//! The event loop runs in a task of its own (a rumqttc `poll` must not be cancelled half-way)
//! and hands the bridge what it needs as [`LinkEvent`]s, in order. When the connection fails it
//! waits `reconnect_interval`, and for the bridge to have seen the failure ([`Link::resume`]),
//! then polls again, which reconnects. Events rumqttc had buffered from the lost connection are
//! handed over before the failure, and requests the bridge made before it saw the failure are
//! set aside with rumqttc's unacknowledged ones, so nothing of one connection is mistaken for the
//! next one's. rumqttc sends those again when the remote broker kept the session (CONNACK with
//! session present 1) and forgets them when it did not: the bridge then sends its whole queue
//! again itself, in order.
//!
//! Messages from the remote broker are acknowledged by the bridge (manual acks), once they are
//! published into the local broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::ClientConfig;
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::settings::{BridgeSettings, Proto};

/// The largest MQTT packet (the remaining length's limit): rumqttc's own default is 10 KiB.
const MAX_PACKET: usize = 268_435_455;
/// Requests the client may have waiting beyond the window (acknowledgements, SUBSCRIBE).
const CHANNEL_SLACK: usize = 1024;
/// How long [`Link::close`] waits for the DISCONNECT to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Session Expiry asked for with `clean_start = false` over MQTT 5 (MQTT 3.1.1 keeps the
/// session until the next clean connect).
const SESSION_EXPIRY_SECS: u32 = 7200;

/// What happened on the connection.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// CONNACK accepted; over MQTT 5 with the remote broker's Maximum Packet Size, if it set one.
    Connected { session_present: bool, max_packet: Option<u32> },
    /// The connection failed or could not be made; a new attempt follows after
    /// `reconnect_interval`.
    Disconnected(String),
    /// A PUBLISH went out (or was taken in for sending) with this packet id; 0 for QoS 0.
    Sent(u16),
    /// The remote broker is done with packet id `pkid`: PUBACK (QoS 1), PUBCOMP (QoS 2), or an
    /// MQTT 5 refusal (PUBACK or PUBREC with a failure reason), with its reason.
    Done { pkid: u16, refused: Option<String> },
    /// The SUBACK of the bridge's subscriptions: how many were refused.
    SubAck { refused: usize },
    /// A message from the remote broker.
    Message(Box<Inbound>),
    /// The DISCONNECT asked by [`Link::close`] went out.
    Closed,
}

/// A message from the remote broker, with what acknowledges it.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) topic: String,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) ack: Ack,
}

impl Inbound {
    pub(crate) fn payload(&self) -> &[u8] {
        match &self.ack {
            Ack::V4(p) => &p.payload,
            Ack::V5(p) => &p.payload,
        }
    }
}

/// The PUBLISH an acknowledgement answers.
#[derive(Debug)]
pub(crate) enum Ack {
    V4(rumqttc::Publish),
    V5(mqtt5::Publish),
}

/// A request the client could not take now (its channel is full, or the event loop ended).
#[derive(Debug)]
pub(crate) struct Busy;

/// The client side of the connection.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    pub(crate) fn try_publish(&self, topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Result<(), Busy> {
        match self {
            Client::V4(c) => c.try_publish(topic, qos4(qos), retain, payload.to_vec()).map_err(|_| Busy),
            Client::V5(c) => c.try_publish(topic, qos5(qos), retain, payload.to_vec()).map_err(|_| Busy),
        }
    }

    /// Acknowledges a message (nothing for QoS 0).
    pub(crate) fn try_ack(&self, ack: &Ack) -> Result<(), Busy> {
        match (self, ack) {
            (Client::V4(c), Ack::V4(p)) => c.try_ack(p).map_err(|_| Busy),
            (Client::V5(c), Ack::V5(p)) => c.try_ack(p).map_err(|_| Busy),
            _ => Ok(()),
        }
    }

    /// Subscribes to `filters` in one SUBSCRIBE. Over MQTT 5 with No Local (the remote broker
    /// never sends the bridge its own messages back) and Retain As Published.
    pub(crate) fn try_subscribe(&self, filters: &[(String, u8)]) -> Result<(), Busy> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(filters.iter().map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos4(*q))))
                .map_err(|_| Busy),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|(f, q)| {
                    let mut filter = mqtt5::Filter::new(f.clone(), qos5(*q));
                    filter.nolocal = true;
                    filter.preserve_retain = true;
                    filter
                }))
                .map_err(|_| Busy),
        }
    }

    fn try_disconnect(&self) -> Result<(), Busy> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|_| Busy),
            Client::V5(c) => c.try_disconnect().map_err(|_| Busy),
        }
    }
}

/// A running connection (connected or reconnecting).
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) events: mpsc::UnboundedReceiver<LinkEvent>,
    task: JoinHandle<()>,
    resume: Arc<Notify>,
}

impl Link {
    /// Starts connecting, on the current tokio runtime.
    pub(crate) fn start(settings: &BridgeSettings, tls: Option<Arc<ClientConfig>>) -> Link {
        let (tx, events) = mpsc::unbounded_channel();
        let cap = settings.max_inflight as usize + CHANNEL_SLACK;
        let transport = match tls {
            Some(config) => Transport::tls_with_config(TlsConfiguration::Rustls(config)),
            None => Transport::tcp(),
        };
        let interval = settings.reconnect_interval;
        let resume = Arc::new(Notify::new());
        let (client, task) = match settings.proto {
            Proto::V4 => {
                let mut options = rumqttc::MqttOptions::new(&settings.clientid, &settings.host, settings.port);
                options
                    .set_keep_alive(settings.keepalive)
                    .set_clean_session(settings.clean_start)
                    .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                    .set_inflight(settings.max_inflight)
                    .set_manual_acks(true)
                    .set_transport(transport);
                if let Some(username) = &settings.username {
                    options.set_credentials(username, settings.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(options, cap);
                (Client::V4(client), tokio::spawn(drive_v4(eventloop, tx, interval, resume.clone())))
            }
            Proto::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(&settings.clientid, &settings.host, settings.port);
                options
                    .set_keep_alive(settings.keepalive)
                    .set_clean_start(settings.clean_start)
                    .set_max_packet_size(Some(MAX_PACKET as u32))
                    .set_outgoing_inflight_upper_limit(settings.max_inflight)
                    .set_manual_acks(true)
                    .set_transport(transport);
                if !settings.clean_start {
                    options.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
                }
                if let Some(username) = &settings.username {
                    options.set_credentials(username, settings.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, cap);
                (Client::V5(client), tokio::spawn(drive_v5(eventloop, tx, interval, resume.clone())))
            }
        };
        Link { client, events, task, resume }
    }

    /// The bridge handled a [`LinkEvent::Disconnected`] and asks nothing more of the old
    /// connection: the next attempt may start (after `reconnect_interval`).
    pub(crate) fn resume(&self) {
        self.resume.notify_one();
    }

    /// Sends DISCONNECT (when connected), waits briefly for it to go out, and ends the event
    /// loop. The events that arrived meanwhile are returned, in order.
    pub(crate) async fn close(mut self) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        if self.client.try_disconnect().is_ok() {
            let deadline = tokio::time::sleep(CLOSE_WAIT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    event = self.events.recv() => match event {
                        Some(LinkEvent::Closed) | None => break,
                        Some(event) => events.push(event),
                    },
                    _ = &mut deadline => break,
                }
            }
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }
}

/// The MQTT 3.1.1 event loop.
async fn drive_v4(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::UnboundedSender<LinkEvent>,
    interval: Duration,
    resume: Arc<Notify>,
) {
    use rumqttc::{Event, Packet};
    let convert = |event: Event| -> Option<LinkEvent> {
        Some(match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                LinkEvent::Connected { session_present: ack.session_present, max_packet: None }
            }
            Event::Incoming(Packet::Publish(p)) => LinkEvent::Message(Box::new(Inbound {
                topic: p.topic.clone(),
                qos: p.qos as u8,
                retain: p.retain,
                ack: Ack::V4(p),
            })),
            Event::Incoming(Packet::PubAck(ack)) => LinkEvent::Done { pkid: ack.pkid, refused: None },
            Event::Incoming(Packet::PubComp(comp)) => LinkEvent::Done { pkid: comp.pkid, refused: None },
            Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck {
                refused: ack.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count(),
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
            Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Closed,
            _ => return None,
        })
    };
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(ack)) = &event {
                    if !ack.session_present {
                        // A publish held back by a packet id collision belonged to the old session.
                        eventloop.state.collision = None;
                    }
                }
                let closed = matches!(event, Event::Outgoing(Outgoing::Disconnect));
                if let Some(event) = convert(event) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                if closed {
                    return;
                }
            }
            Err(error) => {
                for event in eventloop.state.events.drain(..).collect::<Vec<_>>() {
                    if let Some(event) = convert(event) {
                        let _ = tx.send(event);
                    }
                }
                if tx.send(LinkEvent::Disconnected(error.to_string())).is_err()
                    || matches!(error, rumqttc::ConnectionError::RequestsDone)
                {
                    return;
                }
                tokio::time::sleep(interval).await;
                resume.notified().await;
                // What the bridge asked for before it saw the failure is the old connection's.
                eventloop.clean();
            }
        }
    }
}

/// The MQTT 5 event loop.
async fn drive_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    tx: mpsc::UnboundedSender<LinkEvent>,
    interval: Duration,
    resume: Arc<Notify>,
) {
    use mqtt5::{PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode};
    use rumqttc::v5::{Event, Incoming as Packet};
    let convert = |event: Event| -> Option<LinkEvent> {
        Some(match event {
            Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::Connected {
                session_present: ack.session_present,
                max_packet: ack.properties.as_ref().and_then(|p| p.max_packet_size),
            },
            Event::Incoming(Packet::Publish(p)) => LinkEvent::Message(Box::new(Inbound {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                qos: p.qos as u8,
                retain: p.retain,
                ack: Ack::V5(p),
            })),
            Event::Incoming(Packet::PubAck(ack)) => LinkEvent::Done {
                pkid: ack.pkid,
                refused: (!matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers))
                    .then(|| format!("{:?}", ack.reason)),
            },
            Event::Incoming(Packet::PubRec(rec)) => {
                if matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers) {
                    return None;
                }
                LinkEvent::Done { pkid: rec.pkid, refused: Some(format!("{:?}", rec.reason)) }
            }
            Event::Incoming(Packet::PubComp(comp)) => LinkEvent::Done {
                pkid: comp.pkid,
                refused: (comp.reason != PubCompReason::Success).then(|| format!("{:?}", comp.reason)),
            },
            Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck {
                refused: ack.return_codes.iter().filter(|c| !matches!(c, SubscribeReasonCode::Success(_))).count(),
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
            Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Closed,
            _ => return None,
        })
    };
    // When each packet id in flight was sent, to resend in that order (see below).
    let mut sent_at: HashMap<u16, u64> = HashMap::new();
    let mut sends = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(ack)) = &event {
                    if !ack.session_present {
                        eventloop.state.collision = None;
                    }
                }
                note_sent(&event, &mut sent_at, &mut sends);
                let closed = matches!(event, Event::Outgoing(Outgoing::Disconnect));
                if let Some(event) = convert(event) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                if closed {
                    return;
                }
            }
            Err(error) => {
                for event in eventloop.state.events.drain(..).collect::<Vec<_>>() {
                    // Sent before the failure, but not yet told: without this its id kept the
                    // time of its previous use, and its message was resent ahead of older ones.
                    note_sent(&event, &mut sent_at, &mut sends);
                    if let Some(event) = convert(event) {
                        let _ = tx.send(event);
                    }
                }
                if tx.send(LinkEvent::Disconnected(error.to_string())).is_err()
                    || matches!(error, rumqttc::v5::ConnectionError::RequestsDone)
                {
                    return;
                }
                tokio::time::sleep(interval).await;
                resume.notified().await;
                // What the bridge asked for before it saw the failure is the old connection's.
                eventloop.clean();
                // rumqttc's MQTT 5 state gives back the messages in flight by packet id, not in
                // the order they were sent: once ids wrap, newer ones would go first (MQTT-4.6.0-1
                // wants the order kept). PUBRELs first, then what was sent, in that order, then
                // what never was, as queued (a stable sort).
                eventloop.pending.make_contiguous().sort_by_key(|request| match request {
                    rumqttc::v5::Request::Publish(p) => sent_at.get(&p.pkid).copied().unwrap_or(u64::MAX),
                    _ => 0,
                });
            }
        }
    }
}

/// Numbers each PUBLISH sent, by packet id (`sent_at`), so that what is in flight when the
/// connection fails is resent in the order it was sent. QoS 0 goes out with id 0, and is never
/// resent.
fn note_sent(event: &rumqttc::v5::Event, sent_at: &mut HashMap<u16, u64>, sends: &mut u64) {
    if let rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid @ 1..)) = event {
        *sends += 1;
        sent_at.insert(*pkid, *sends);
    }
}
