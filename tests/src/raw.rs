//! A raw MQTT connection for tests that need to do what a well-behaved client library will
//! not: hold back acknowledgements, look at DUP flags and packet ids, send a packet the
//! broker must refuse. Packets are encoded and decoded by rumqttc's own codec (`mqttbytes`,
//! v4 for MQTT 3.1.1 and v5), an implementation independent of the broker's, except for the
//! MQTT 5 PUBLISH the broker sends, which is decoded here (see [`V5`]).
//!
//! Blocking `std::net` I/O with the test deadline as read timeout.
//!
//! [`C5`] is a well-behaved MQTT 5 client on top of a raw connection (packet ids, QoS flows,
//! acknowledgements) for tests that look at every property the broker sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::QoS;

use crate::{text, Broker, DEADLINE};

/// MQTT 5 packets (rumqttc's codec).
pub use rumqttc::v5::mqttbytes::v5;

/// A packet codec: MQTT 3.1.1 or 5.
pub trait Wire {
    type Packet: std::fmt::Debug + PartialEq;
    type ConnAck: std::fmt::Debug;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String>;
    fn write(packet: &Self::Packet, buf: &mut BytesMut);
    /// The CONNACK in `packet`, or the packet back if it is something else.
    fn connack(packet: Self::Packet) -> Result<Self::ConnAck, Self::Packet>;
    fn pingreq() -> Self::Packet;
    fn pingresp() -> Self::Packet;
}

/// MQTT 3.1.1 (rumqttc's `mqttbytes::v4`).
#[derive(Debug)]
pub struct V4;

impl Wire for V4 {
    type Packet = rumqttc::Packet;
    type ConnAck = rumqttc::ConnAck;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String> {
        rumqttc::Packet::read(buf, 1 << 24).map_err(|e| format!("{e:?}"))
    }
    fn write(packet: &Self::Packet, buf: &mut BytesMut) {
        packet.write(buf, 1 << 24).expect("encode");
    }
    fn connack(packet: Self::Packet) -> Result<Self::ConnAck, Self::Packet> {
        match packet {
            rumqttc::Packet::ConnAck(ack) => Ok(ack),
            other => Err(other),
        }
    }
    fn pingreq() -> Self::Packet {
        rumqttc::Packet::PingReq
    }
    fn pingresp() -> Self::Packet {
        rumqttc::Packet::PingResp
    }
}

/// MQTT 5: rumqttc 0.25.1's `v5::mqttbytes::v5` codec, except that a PUBLISH is decoded in
/// this module: rumqttc's `PublishProperties::read` counts each Subscription Identifier one
/// byte too long, so with several identifiers the last ones (and any property after them)
/// are taken for payload.
#[derive(Debug)]
pub struct V5;

impl Wire for V5 {
    type Packet = v5::Packet;
    type ConnAck = v5::ConnAck;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String> {
        if buf.first().is_some_and(|b| b >> 4 == 3) {
            read_publish(buf)
        } else {
            v5::Packet::read(buf, None).map_err(|e| format!("{e:?}"))
        }
    }
    fn write(packet: &Self::Packet, buf: &mut BytesMut) {
        packet.write(buf, None).expect("encode");
    }
    fn connack(packet: Self::Packet) -> Result<Self::ConnAck, Self::Packet> {
        match packet {
            v5::Packet::ConnAck(ack) => Ok(ack),
            other => Err(other),
        }
    }
    fn pingreq() -> Self::Packet {
        v5::Packet::PingReq(v5::PingReq)
    }
    fn pingresp() -> Self::Packet {
        v5::Packet::PingResp(v5::PingResp)
    }
}

/// A variable byte integer at the start of `bytes`: (value, bytes it takes), `None` if cut.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn take(body: &mut Bytes, n: usize) -> Result<Bytes, String> {
    if body.len() < n {
        return Err(format!("PUBLISH cut short: {n} bytes wanted, {} left", body.len()));
    }
    Ok(body.split_to(n))
}

fn take_u16(body: &mut Bytes) -> Result<u16, String> {
    Ok(take(body, 2)?.get_u16())
}

fn take_string(body: &mut Bytes) -> Result<String, String> {
    let len = take_u16(body)?;
    String::from_utf8(take(body, usize::from(len))?.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
}

fn take_varint(body: &mut Bytes) -> Result<usize, String> {
    let (value, len) = varint(body).ok_or("bad variable byte integer")?;
    body.advance(len);
    Ok(value)
}

/// Decodes the MQTT 5 PUBLISH at the start of `buf` (consumed only when whole), as strictly
/// as rumqttc does (QoS 3, packet id 0 at QoS 1/2 and properties a PUBLISH cannot have are
/// errors) but reading every Subscription Identifier right.
fn read_publish(buf: &mut BytesMut) -> Result<v5::Packet, String> {
    let (remaining, len_len) = match varint(&buf[1..]) {
        Some(found) => found,
        None if buf.len() < 5 => return Err("InsufficientBytes".into()),
        None => return Err("bad remaining length".into()),
    };
    if buf.len() < 1 + len_len + remaining {
        return Err("InsufficientBytes".into());
    }
    let frame = buf.split_to(1 + len_len + remaining).freeze();
    let first = frame[0];
    let mut body = frame.slice(1 + len_len..);
    let qos = match (first >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        q => return Err(format!("PUBLISH with QoS {q}")),
    };
    let topic_len = take_u16(&mut body)?;
    let topic = take(&mut body, usize::from(topic_len))?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { take_u16(&mut body)? };
    if qos != QoS::AtMostOnce && pkid == 0 {
        return Err(format!("PUBLISH at {qos:?} with packet id 0"));
    }
    let props_len = take_varint(&mut body)?;
    let mut props = take(&mut body, props_len)?;
    let mut p = v5::PublishProperties::default();
    while !props.is_empty() {
        match take(&mut props, 1)?[0] {
            0x01 => p.payload_format_indicator = Some(take(&mut props, 1)?[0]),
            0x02 => p.message_expiry_interval = Some(take(&mut props, 4)?.get_u32()),
            0x03 => p.content_type = Some(take_string(&mut props)?),
            0x08 => p.response_topic = Some(take_string(&mut props)?),
            0x09 => {
                let len = take_u16(&mut props)?;
                p.correlation_data = Some(take(&mut props, usize::from(len))?);
            }
            0x0b => p.subscription_identifiers.push(take_varint(&mut props)?),
            0x23 => p.topic_alias = Some(take_u16(&mut props)?),
            0x26 => {
                let key = take_string(&mut props)?;
                p.user_properties.push((key, take_string(&mut props)?));
            }
            other => return Err(format!("property {other:#04x} in a PUBLISH")),
        }
    }
    Ok(v5::Packet::Publish(v5::Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        pkid,
        payload: body,
        properties: (props_len > 0).then_some(p),
    }))
}

/// One raw connection.
#[derive(Debug)]
pub struct Raw<W: Wire> {
    stream: TcpStream,
    buf: BytesMut,
    _wire: std::marker::PhantomData<W>,
}

/// Nothing came from the broker in the time given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl<W: Wire> Raw<W> {
    /// Opens a TCP connection (nothing sent yet).
    pub fn open(addr: SocketAddr) -> Raw<W> {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: BytesMut::new(), _wire: std::marker::PhantomData }
    }

    /// Connects with `connect` and returns the CONNACK (panics on anything else).
    pub fn connect(addr: SocketAddr, connect: &W::Packet) -> (Raw<W>, W::ConnAck) {
        let mut raw = Raw::open(addr);
        raw.send(connect);
        match W::connack(raw.recv()) {
            Ok(ack) => (raw, ack),
            Err(other) => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a packet.
    pub fn send(&mut self, packet: &W::Packet) {
        let mut out = BytesMut::new();
        W::write(packet, &mut out);
        self.send_bytes(&out);
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the broker");
    }

    /// The next packet, or `None` when the broker closed the connection. Panics when nothing
    /// comes within the deadline.
    pub fn next_packet(&mut self) -> Option<W::Packet> {
        self.read_packet().unwrap_or_else(|TimedOut| panic!("nothing from the broker within {DEADLINE:?}"))
    }

    /// The next packet if one comes within `wait`: `Ok(None)` when the broker closed the
    /// connection, `Err(TimedOut)` when nothing came.
    pub fn next_packet_within(&mut self, wait: Duration) -> Result<Option<W::Packet>, TimedOut> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let packet = self.read_packet();
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        packet
    }

    /// The next packet; `Err(TimedOut)` when the read timed out (the buffer keeps what came).
    fn read_packet(&mut self) -> Result<Option<W::Packet>, TimedOut> {
        loop {
            if !self.buf.is_empty() {
                let mut attempt = self.buf.clone();
                match W::read(&mut attempt) {
                    Ok(packet) => {
                        self.buf = attempt;
                        return Ok(Some(packet));
                    }
                    Err(e) if e.contains("InsufficientBytes") => {}
                    Err(e) => panic!("undecodable packet from the broker: {e}"),
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(TimedOut)
                }
                Err(_) => return Ok(None), // reset
            }
        }
    }

    /// The next packet; panics if the connection closed.
    pub fn recv(&mut self) -> W::Packet {
        self.next_packet().expect("the broker closed the connection")
    }

    /// Reads until the broker closes the connection; returns what came before.
    pub fn until_closed(&mut self) -> Vec<W::Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.next_packet() {
            packets.push(packet);
        }
        packets
    }

    /// Sends PINGREQ and asserts that the next packet is a PINGRESP (so the connection is
    /// still open, and nothing else was on its way before the answer).
    pub fn ping(&mut self, what: &str) {
        self.send(&W::pingreq());
        match self.next_packet() {
            Some(packet) if packet == W::pingresp() => {}
            other => panic!("{what}: expected PINGRESP (still connected), got {other:?}"),
        }
    }

    /// Closes the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The CONNECT properties of an MQTT 5 session that outlives its connection by `seconds`
/// (Session Expiry Interval).
pub fn expiry(seconds: u32) -> Option<v5::ConnectProperties> {
    Some(v5::ConnectProperties { session_expiry_interval: Some(seconds), ..v5::ConnectProperties::new() })
}

/// An MQTT 5 CONNECT for `client_id` with keep-alive 60 and the given clean start and
/// properties.
pub fn connect5(client_id: &str, clean_start: bool, properties: Option<v5::ConnectProperties>) -> v5::Packet {
    let connect = v5::Connect { keep_alive: 60, client_id: client_id.to_owned(), clean_start, properties };
    v5::Packet::Connect(connect, None, None)
}

/// An MQTT 5 will on `topic` with a Will Delay Interval of `delay` seconds, if any.
pub fn will5(topic: &str, payload: &str, qos: QoS, retain: bool, delay: Option<u32>) -> v5::LastWill {
    let properties = v5::LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    v5::LastWill::new(topic, payload, qos, retain, Some(properties))
}

/// An MQTT 3.1.1 CONNECT for `client_id` with keep-alive 60.
pub fn connect4(client_id: &str, clean_session: bool) -> rumqttc::Packet {
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = 60;
    connect.clean_session = clean_session;
    rumqttc::Packet::Connect(connect)
}

impl Raw<V4> {
    /// Sends DISCONNECT and asserts that the broker closes the connection without sending
    /// anything more.
    pub fn disconnect(&mut self) {
        self.send(&rumqttc::Packet::Disconnect);
        let rest = self.until_closed();
        assert!(rest.is_empty(), "the broker closes after the client's DISCONNECT, got {rest:?}");
    }
}

impl Raw<V5> {
    /// Sends DISCONNECT with `code` and asserts that the broker closes the connection without
    /// sending anything more.
    pub fn disconnect(&mut self, code: v5::DisconnectReasonCode) {
        self.send(&v5::Packet::Disconnect(v5::Disconnect::new(code)));
        let rest = self.until_closed();
        assert!(rest.is_empty(), "the broker closes after the client's DISCONNECT, got {rest:?}");
    }

    /// Reads the connection to its end: exactly one packet, a DISCONNECT with `code`, then the
    /// close (MQTT-3.14.4-1: nothing after DISCONNECT). Returns the DISCONNECT.
    pub fn expect_disconnect(&mut self, code: v5::DisconnectReasonCode, what: &str) -> v5::Disconnect {
        match self.next_packet() {
            Some(v5::Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, code, "{what}: {d:?}");
                let rest = self.until_closed();
                assert!(rest.is_empty(), "{what}: nothing after DISCONNECT (MQTT-3.14.4-1), got {rest:?}");
                d
            }
            other => panic!("{what}: expected DISCONNECT {code:?}, got {other:?}"),
        }
    }

    /// [`expect_disconnect`](Self::expect_disconnect), and the DISCONNECT has no Session
    /// Expiry Interval (MQTT-3.14.2-2: the server never sends one).
    pub fn expect_disconnect_without_expiry(&mut self, code: v5::DisconnectReasonCode, what: &str) {
        let d = self.expect_disconnect(code, what);
        let expiry = d.properties.as_ref().and_then(|p| p.session_expiry_interval);
        assert_eq!(expiry, None, "{what}: a server DISCONNECT has no Session Expiry Interval");
    }
}

/// The topic of an MQTT 5 PUBLISH, as text.
pub fn topic(p: &v5::Publish) -> String {
    text(&p.topic)
}

/// The payload of an MQTT 5 PUBLISH, as text.
pub fn payload(p: &v5::Publish) -> String {
    text(&p.payload)
}

/// An MQTT 5 client on a raw connection: it numbers its packets, completes the QoS flows of
/// what it publishes and acknowledges what it receives, and asserts what a well-behaved
/// client expects (matching packet ids, granted subscriptions, accepted messages). `raw` is
/// there for the packets a test sends or reads itself.
#[derive(Debug)]
pub struct C5 {
    pub raw: Raw<V5>,
    id: String,
    pkid: u16,
}

impl C5 {
    /// Connects `id` with Clean Start and no properties, asserting success.
    pub fn connect(broker: &Broker, id: &str) -> C5 {
        C5::connect_with(broker, id, None).0
    }

    /// Connects `id` with Clean Start and `props`; returns the CONNACK, asserting success.
    pub fn connect_with(broker: &Broker, id: &str, props: Option<v5::ConnectProperties>) -> (C5, v5::ConnAck) {
        C5::connect_packet(broker, &connect5(id, true, props))
    }

    /// Connects with `connect` and returns the CONNACK, asserting success.
    pub fn connect_packet(broker: &Broker, connect: &v5::Packet) -> (C5, v5::ConnAck) {
        let id = match connect {
            v5::Packet::Connect(c, _, _) => c.client_id.clone(),
            other => panic!("not a CONNECT: {other:?}"),
        };
        let (raw, ack) = Raw::<V5>::connect(broker.addr, connect);
        assert_eq!(ack.code, v5::ConnectReturnCode::Success, "{id}: CONNACK {ack:?}");
        (C5 { raw, id, pkid: 0 }, ack)
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close, asserting it sent nothing
    /// more.
    pub fn disconnect(mut self) {
        self.raw.disconnect(v5::DisconnectReasonCode::NormalDisconnection);
    }

    /// The next packet id (1 to 65535, then 1 again).
    pub fn next_pkid(&mut self) -> u16 {
        self.pkid = self.pkid % u16::MAX + 1;
        self.pkid
    }

    /// Sends one SUBSCRIBE (with a Subscription Identifier if `id`) and returns its SUBACK's
    /// reason codes.
    pub fn subscribe_with(&mut self, filters: Vec<v5::Filter>, id: Option<usize>) -> Vec<v5::SubscribeReasonCode> {
        let pkid = self.next_pkid();
        let properties = id.map(|id| v5::SubscribeProperties { id: Some(id), user_properties: Vec::new() });
        self.raw.send(&v5::Packet::Subscribe(v5::Subscribe { pkid, filters, properties }));
        match self.raw.recv() {
            v5::Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, pkid, "the SUBACK's packet id");
                ack.return_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter (with a Subscription Identifier if `id`), asserting it is
    /// granted at `qos`.
    pub fn subscribe_id(&mut self, filter: &str, qos: QoS, id: Option<usize>) {
        let codes = self.subscribe_with(vec![v5::Filter::new(filter, qos)], id);
        assert_eq!(codes, vec![v5::SubscribeReasonCode::Success(qos)], "SUBSCRIBE {filter}");
    }

    /// Subscribes to one filter, asserting it is granted at `qos`.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscribe_id(filter, qos, None);
    }

    /// Sends one UNSUBSCRIBE and returns its UNSUBACK's reason codes.
    pub fn unsubscribe(&mut self, filters: &[&str]) -> Vec<v5::UnsubAckReason> {
        let pkid = self.next_pkid();
        let filters = filters.iter().map(|f| (*f).to_owned()).collect();
        self.raw.send(&v5::Packet::Unsubscribe(v5::Unsubscribe { pkid, filters, properties: None }));
        match self.raw.recv() {
            v5::Packet::UnsubAck(ack) => {
                assert_eq!(ack.pkid, pkid, "the UNSUBACK's packet id");
                ack.reasons
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Sends `publish` (packet id set here for QoS 1/2) and completes its QoS flow; returns
    /// the PUBACK or PUBREC. A PUBREC with a failure code ends the flow (no PUBREL).
    pub fn publish_packet(&mut self, mut publish: v5::Publish) -> Option<v5::Packet> {
        if publish.qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        let (pkid, qos) = (publish.pkid, publish.qos);
        self.raw.send(&v5::Packet::Publish(publish));
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => match self.raw.recv() {
                v5::Packet::PubAck(ack) if ack.pkid == pkid => Some(v5::Packet::PubAck(ack)),
                other => panic!("expected PUBACK {pkid}, got {other:?}"),
            },
            QoS::ExactlyOnce => match self.raw.recv() {
                v5::Packet::PubRec(rec) if rec.pkid == pkid => {
                    if matches!(rec.reason, v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers) {
                        let rel = v5::PubRel { pkid, reason: v5::PubRelReason::Success, properties: None };
                        self.raw.send(&v5::Packet::PubRel(rel));
                        match self.raw.recv() {
                            v5::Packet::PubComp(comp) if comp.pkid == pkid => {}
                            other => panic!("expected PUBCOMP {pkid}, got {other:?}"),
                        }
                    }
                    Some(v5::Packet::PubRec(rec))
                }
                other => panic!("expected PUBREC {pkid}, got {other:?}"),
            },
        }
    }

    /// Publishes with `props` (see [`publish_packet`](Self::publish_packet)).
    pub fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: &str,
        props: v5::PublishProperties,
    ) -> Option<v5::Packet> {
        self.publish_packet(v5::Publish::new(topic, qos, payload.as_bytes().to_vec(), Some(props)))
    }

    /// Publishes with the RETAIN flag `retain` (see [`publish_packet`](Self::publish_packet)).
    pub fn publish_retain(&mut self, topic: &str, qos: QoS, retain: bool, payload: &str) -> Option<v5::Packet> {
        let mut publish = v5::Publish::new(topic, qos, payload.as_bytes().to_vec(), None);
        publish.retain = retain;
        self.publish_packet(publish)
    }

    /// Publishes and asserts the broker accepted it (QoS 1/2: a success code).
    pub fn publish(&mut self, topic: &str, qos: QoS, payload: &str) {
        match self.publish_retain(topic, qos, false, payload) {
            None => {}
            Some(v5::Packet::PubAck(ack)) => assert!(
                matches!(ack.reason, v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers),
                "PUBACK for {topic}: {ack:?}"
            ),
            Some(v5::Packet::PubRec(rec)) => assert!(
                matches!(rec.reason, v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers),
                "PUBREC for {topic}: {rec:?}"
            ),
            Some(other) => unreachable!("{other:?}"),
        }
    }

    /// The next PUBLISH (acknowledged as its QoS requires); anything else but a PUBREL
    /// (answered with PUBCOMP) fails the test.
    pub fn next_publish(&mut self) -> v5::Publish {
        loop {
            let packet = self.raw.recv();
            if let Some(p) = self.answer(packet) {
                return p;
            }
        }
    }

    /// The next PUBLISH if one comes within `wait` (handled as by `next_publish`).
    pub fn next_publish_within(&mut self, wait: Duration) -> Option<v5::Publish> {
        loop {
            let packet = self.raw.next_packet_within(wait).ok()?.expect("the broker closed the connection");
            if let Some(p) = self.answer(packet) {
                return Some(p);
            }
        }
    }

    /// Answers `packet` as its kind requires; a PUBLISH is returned.
    fn answer(&mut self, packet: v5::Packet) -> Option<v5::Publish> {
        match packet {
            v5::Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.raw.send(&v5::Packet::PubAck(v5::PubAck {
                        pkid: p.pkid,
                        reason: v5::PubAckReason::Success,
                        properties: None,
                    })),
                    QoS::ExactlyOnce => self.raw.send(&v5::Packet::PubRec(v5::PubRec {
                        pkid: p.pkid,
                        reason: v5::PubRecReason::Success,
                        properties: None,
                    })),
                }
                Some(p)
            }
            v5::Packet::PubRel(rel) => {
                self.raw.send(&v5::Packet::PubComp(v5::PubComp {
                    pkid: rel.pkid,
                    reason: v5::PubCompReason::Success,
                    properties: None,
                }));
                None
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Every PUBLISH before the first one on `marker` (which is consumed).
    pub fn until(&mut self, marker: &str) -> Vec<v5::Publish> {
        let mut got = Vec::new();
        loop {
            let p = self.next_publish();
            if topic(&p) == marker {
                return got;
            }
            got.push(p);
        }
    }

    /// Expects a DISCONNECT with `code`, then the connection closing.
    pub fn expect_disconnect(mut self, code: v5::DisconnectReasonCode) {
        let what = self.id.clone();
        self.raw.expect_disconnect(code, &what);
    }
}
