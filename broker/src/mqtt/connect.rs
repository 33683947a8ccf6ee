//! CONNECT (client → broker) and CONNACK (broker → client).

use bytes::BufMut;

use super::frame::{kind, put_header};
use super::properties::{id, Allowed, Properties, PropertyWriter};
use super::reader::{DecodeError, Reader};
use super::reason;
use super::Version;

/// A CONNECT, borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect<'a> {
    pub(crate) version: Version,
    pub(crate) clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub(crate) keep_alive: u16,
    pub(crate) properties: Properties<'a>,
    /// May be empty: the broker then assigns one, or refuses (see the connection's handshake).
    pub(crate) client_id: &'a str,
    pub(crate) will: Option<Will<'a>>,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a [u8]>,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) properties: Properties<'a>,
}

/// Why a CONNECT cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A protocol name or level this broker does not speak: answered with CONNACK 0x01 (3.1.1)
    /// or 0x84 (5), MQTT-3.1.2-2.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedVersion { name: String, level: u8 },
}

impl<'a> Connect<'a> {
    /// Decodes a CONNECT's body.
    pub(crate) fn decode(body: &'a [u8]) -> Result<Connect<'a>, ConnectError> {
        let mut r = Reader::new(body);
        let name = r.string()?;
        let level = r.u8()?;
        let version = match (name, level) {
            ("MQTT", 4) => Version::V3_1_1,
            ("MQTT", 5) => Version::V5,
            ("MQIsdp", 3) => Version::V3_1,
            _ => return Err(ConnectError::UnsupportedVersion { name: name.to_owned(), level }),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::Malformed("the reserved CONNECT flag is set (MQTT-3.1.2-3)").into());
        }
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::Malformed("will QoS or retain without a will (MQTT-3.1.2-11)").into());
        }
        if will_qos == 3 {
            return Err(DecodeError::Malformed("will QoS 3 (MQTT-3.1.2-14)").into());
        }
        let has_username = flags & 0x80 != 0;
        let has_password = flags & 0x40 != 0;
        if has_password && !has_username && version != Version::V5 {
            return Err(DecodeError::Malformed("a password without a user name (MQTT-3.1.2-22)").into());
        }
        let keep_alive = r.u16()?;
        let properties =
            if version.is_v5() { Properties::decode(&mut r, Allowed::CONNECT)? } else { Properties::default() };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties =
                if version.is_v5() { Properties::decode(&mut r, Allowed::WILL)? } else { Properties::default() };
            let topic = r.string()?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if has_username { Some(r.string()?) } else { None };
        let password = if has_password { Some(r.binary()?) } else { None };
        r.finish()?;
        Ok(Connect {
            version,
            clean_start: flags & 0x02 != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }
}

/// What a CONNACK says besides its code (MQTT 5 properties; ignored for 3.1.1).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnackProperties<'a> {
    pub(crate) session_expiry_interval: Option<u32>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) maximum_qos: Option<u8>,
    pub(crate) retain_available: Option<bool>,
    pub(crate) maximum_packet_size: Option<u32>,
    pub(crate) assigned_client_identifier: Option<&'a str>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) reason_string: Option<&'a str>,
    pub(crate) wildcard_subscription_available: Option<bool>,
    pub(crate) subscription_identifiers_available: Option<bool>,
    pub(crate) shared_subscription_available: Option<bool>,
    pub(crate) server_keep_alive: Option<u16>,
    pub(crate) response_information: Option<&'a str>,
}

impl ConnackProperties<'_> {
    /// The same, less what says what a client assumes anyway when it is left out (availability
    /// flags that are 1), the Reason String and the Response Information (a client must do
    /// without them: MQTT 5 §3.2.2.3.15): for a client whose Maximum Packet Size the full
    /// CONNACK would not fit (MQTT-3.1.2-24).
    pub(crate) fn without_defaults(self) -> Self {
        let not_default = |flag: Option<bool>| flag.filter(|&available| !available);
        ConnackProperties {
            retain_available: not_default(self.retain_available),
            wildcard_subscription_available: not_default(self.wildcard_subscription_available),
            subscription_identifiers_available: not_default(self.subscription_identifiers_available),
            shared_subscription_available: not_default(self.shared_subscription_available),
            reason_string: None,
            response_information: None,
            ..self
        }
    }

    fn write(&self, w: &mut PropertyWriter<impl BufMut>) {
        if let Some(v) = self.session_expiry_interval {
            w.u32(id::SESSION_EXPIRY_INTERVAL, v);
        }
        if let Some(v) = self.receive_maximum {
            w.u16(id::RECEIVE_MAXIMUM, v);
        }
        if let Some(v) = self.maximum_qos {
            w.u8(id::MAXIMUM_QOS, v);
        }
        if let Some(v) = self.retain_available {
            w.u8(id::RETAIN_AVAILABLE, v as u8);
        }
        if let Some(v) = self.maximum_packet_size {
            w.u32(id::MAXIMUM_PACKET_SIZE, v);
        }
        if let Some(v) = self.assigned_client_identifier {
            w.string(id::ASSIGNED_CLIENT_IDENTIFIER, v);
        }
        if let Some(v) = self.topic_alias_maximum {
            w.u16(id::TOPIC_ALIAS_MAXIMUM, v);
        }
        if let Some(v) = self.reason_string {
            w.string(id::REASON_STRING, v);
        }
        if let Some(v) = self.wildcard_subscription_available {
            w.u8(id::WILDCARD_SUBSCRIPTION_AVAILABLE, v as u8);
        }
        if let Some(v) = self.subscription_identifiers_available {
            w.u8(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, v as u8);
        }
        if let Some(v) = self.shared_subscription_available {
            w.u8(id::SHARED_SUBSCRIPTION_AVAILABLE, v as u8);
        }
        if let Some(v) = self.server_keep_alive {
            w.u16(id::SERVER_KEEP_ALIVE, v);
        }
        if let Some(v) = self.response_information {
            w.string(id::RESPONSE_INFORMATION, v);
        }
    }
}

/// Appends a CONNACK. `code` is an MQTT 5 reason code; for 3.1 and 3.1.1 it is mapped to the
/// nearest return code and the properties are left out. A refusal never says a session is
/// present (MQTT-3.2.2-4, MQTT-3.2.2-6), nor does a CONNACK to an MQTT 3.1 client.
pub(crate) fn encode_connack(
    out: &mut impl BufMut,
    version: Version,
    session_present: bool,
    code: u8,
    properties: &ConnackProperties<'_>,
) {
    // MQTT 3.1 has no Session Present: the byte is reserved (0).
    let session_present = session_present && code == reason::SUCCESS && version != Version::V3_1;
    if !version.is_v5() {
        put_header(out, kind::CONNACK << 4, 2);
        out.put_u8(session_present as u8);
        out.put_u8(reason::connack_v3(code));
        return;
    }
    let mut props = PropertyWriter { out: Vec::new() };
    properties.write(&mut props);
    let props = props.out;
    let body_len = 2 + super::properties::block_len(props.len());
    put_header(out, kind::CONNACK << 4, body_len);
    out.put_u8(session_present as u8);
    out.put_u8(code);
    super::frame::put_varint(out, props.len());
    out.put_slice(&props);
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_CREDENTIALS: [u8; 21] =
        [0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 0, 0, 2, b'c', b'1', 0, 1, b'u', 0, 2, b'p', b'w'];

    #[test]
    fn v4_with_credentials() {
        let c = Connect::decode(&V4_CREDENTIALS).unwrap();
        assert_eq!((c.version, c.clean_start, c.keep_alive, c.client_id), (Version::V3_1_1, true, 0, "c1"));
        assert_eq!((c.username, c.password), (Some("u"), Some(&b"pw"[..])));
        assert!(c.will.is_none());
    }

    #[test]
    fn v5_properties_and_will() {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x2c, 0, 30];
        body.extend_from_slice(&[8, 0x11, 0, 0, 0, 100, 0x21, 0, 10]); // expiry 100, receive max 10
        body.extend_from_slice(&[0, 1, b'x']);
        body.extend_from_slice(&[5, 0x18, 0, 0, 0, 7]); // will delay 7
        body.extend_from_slice(&[0, 1, b't', 0, 2, b'w', b'!']);
        let c = Connect::decode(&body).unwrap();
        assert_eq!(c.properties.session_expiry_interval, Some(100));
        assert_eq!(c.properties.receive_maximum, Some(10));
        let will = c.will.unwrap();
        assert_eq!((will.topic, will.payload, will.qos, will.retain), ("t", &b"w!"[..], 1, true));
        assert_eq!(will.properties.will_delay_interval, Some(7));
    }

    /// What a client may do without goes first when a CONNACK would not fit its Maximum Packet
    /// Size: availability flags that say what it assumes, the Reason String, the Response
    /// Information; what it must know stays.
    #[test]
    fn a_connack_without_defaults_keeps_what_the_client_must_know() {
        let full = ConnackProperties {
            retain_available: Some(true),
            wildcard_subscription_available: Some(false),
            reason_string: Some("why"),
            response_information: Some("replies/"),
            assigned_client_identifier: Some("c1"),
            server_keep_alive: Some(30),
            ..Default::default()
        };
        let slim = full.without_defaults();
        assert_eq!((slim.retain_available, slim.wildcard_subscription_available), (None, Some(false)));
        assert_eq!((slim.reason_string, slim.response_information), (None, None));
        assert_eq!((slim.assigned_client_identifier, slim.server_keep_alive), (Some("c1"), Some(30)));
    }

    #[test]
    fn refusals() {
        let mut reserved = V4_CREDENTIALS;
        reserved[7] |= 0x01;
        assert!(matches!(Connect::decode(&reserved), Err(ConnectError::Decode(DecodeError::Malformed(_)))));
        let mut password_only = V4_CREDENTIALS;
        password_only[7] = 0x42;
        assert!(Connect::decode(&password_only).is_err(), "MQTT-3.1.2-22");
        let mut level = V4_CREDENTIALS;
        level[6] = 6;
        assert_eq!(Connect::decode(&level), Err(ConnectError::UnsupportedVersion { name: "MQTT".into(), level: 6 }));
        let mut extra = V4_CREDENTIALS.to_vec();
        extra.push(0);
        assert!(Connect::decode(&extra).is_err(), "trailing bytes");
        assert!(Connect::decode(&V4_CREDENTIALS[..12]).is_err(), "truncated");
    }

    #[test]
    fn connack_v3_and_v5() {
        let mut out = Vec::new();
        encode_connack(&mut out, Version::V3_1_1, true, reason::SUCCESS, &ConnackProperties::default());
        assert_eq!(out, [0x20, 2, 1, 0]);
        out.clear();
        encode_connack(&mut out, Version::V3_1_1, true, reason::NOT_AUTHORIZED, &ConnackProperties::default());
        assert_eq!(out, [0x20, 2, 0, 5], "no session present on refusal");
        out.clear();
        let props = ConnackProperties { receive_maximum: Some(5), ..Default::default() };
        encode_connack(&mut out, Version::V5, false, reason::SUCCESS, &props);
        assert_eq!(out, [0x20, 6, 0, 0, 3, 0x21, 0, 5]);
    }
}
