//! A raw MQTT connection for tests that need to do what a well-behaved client library will
//! not: hold back acknowledgements, look at DUP flags and packet ids, send a packet the
//! broker must refuse. Packets are encoded and decoded by rumqttc's own codec (`mqttbytes`,
//! v4 for MQTT 3.1.1 and v5), an implementation independent of the broker's.
//!
//! Blocking `std::net` I/O with the test deadline as read timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bytes::BytesMut;

use crate::DEADLINE;

/// MQTT 5 packets (rumqttc's codec).
pub use rumqttc::v5::mqttbytes::v5;

/// A packet codec: MQTT 3.1.1 or 5.
pub trait Wire {
    type Packet: std::fmt::Debug;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String>;
    fn write(packet: &Self::Packet, buf: &mut BytesMut);
}

/// MQTT 3.1.1 (rumqttc's `mqttbytes::v4`).
#[derive(Debug)]
pub struct V4;

impl Wire for V4 {
    type Packet = rumqttc::Packet;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String> {
        rumqttc::Packet::read(buf, 1 << 24).map_err(|e| format!("{e:?}"))
    }
    fn write(packet: &Self::Packet, buf: &mut BytesMut) {
        packet.write(buf, 1 << 24).expect("encode");
    }
}

/// MQTT 5 (rumqttc's `v5::mqttbytes::v5`).
#[derive(Debug)]
pub struct V5;

impl Wire for V5 {
    type Packet = v5::Packet;
    fn read(buf: &mut BytesMut) -> Result<Self::Packet, String> {
        v5::Packet::read(buf, None).map_err(|e| format!("{e:?}"))
    }
    fn write(packet: &Self::Packet, buf: &mut BytesMut) {
        packet.write(buf, None).expect("encode");
    }
}

/// One raw connection.
#[derive(Debug)]
pub struct Raw<W: Wire> {
    stream: TcpStream,
    buf: BytesMut,
    _wire: std::marker::PhantomData<W>,
}

impl<W: Wire> Raw<W> {
    /// Opens a TCP connection (nothing sent yet).
    pub fn open(addr: SocketAddr) -> Raw<W> {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: BytesMut::new(), _wire: std::marker::PhantomData }
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
        loop {
            if !self.buf.is_empty() {
                let mut attempt = self.buf.clone();
                match W::read(&mut attempt) {
                    Ok(packet) => {
                        self.buf = attempt;
                        return Some(packet);
                    }
                    Err(e) if e.contains("InsufficientBytes") => {}
                    Err(e) => panic!("undecodable packet from the broker: {e}"),
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("nothing from the broker within {DEADLINE:?}")
                }
                Err(_) => return None, // reset
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

    /// Closes the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// An MQTT 5 CONNECT for `client_id` with keep-alive 60 and the given clean start and
/// properties.
pub fn connect5(client_id: &str, clean_start: bool, properties: Option<v5::ConnectProperties>) -> v5::Packet {
    let connect = v5::Connect { keep_alive: 60, client_id: client_id.to_owned(), clean_start, properties };
    v5::Packet::Connect(connect, None, None)
}

/// An MQTT 3.1.1 CONNECT for `client_id` with keep-alive 60.
pub fn connect4(client_id: &str, clean_session: bool) -> rumqttc::Packet {
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = 60;
    connect.clean_session = clean_session;
    rumqttc::Packet::Connect(connect)
}

impl Raw<V5> {
    /// Connects with `connect` and returns the CONNACK (panics on anything else).
    pub fn connect(addr: SocketAddr, connect: &v5::Packet) -> (Raw<V5>, v5::ConnAck) {
        let mut raw = Raw::open(addr);
        raw.send(connect);
        match raw.recv() {
            v5::Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

impl Raw<V4> {
    /// Connects with `connect` and returns the CONNACK (panics on anything else).
    pub fn connect(addr: SocketAddr, connect: &rumqttc::Packet) -> (Raw<V4>, rumqttc::ConnAck) {
        let mut raw = Raw::open(addr);
        raw.send(connect);
        match raw.recv() {
            rumqttc::Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}
