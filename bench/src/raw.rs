//! Hand-made MQTT 3.1.1 packets, for the benchmarks that need to control the bytes a broker
//! gets and when (no client library between them and the socket). Bodies are under 128 bytes.

/// Appends `s` as an MQTT string (length first).
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A packet: fixed header byte `first`, then `body` (under 128 bytes).
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "a one-byte remaining length");
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

/// CONNECT, MQTT 3.1.1, keep-alive 60 s, with Clean Session `clean`.
pub fn connect(client_id: &str, clean: bool) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.extend_from_slice(&[4, if clean { 0x02 } else { 0x00 }, 0, 60]);
    string(&mut body, client_id);
    packet(0x10, &body)
}

/// SUBSCRIBE (packet id 1) to `topic` at `qos`.
pub fn subscribe(topic: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    string(&mut body, topic);
    body.push(qos);
    packet(0x82, &body)
}
