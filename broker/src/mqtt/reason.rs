//! Reason codes (MQTT 5 §2.4) the broker sends, and the MQTT 3.1.1 return codes they map to.

pub(crate) const SUCCESS: u8 = 0x00;
pub(crate) const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub(crate) const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub(crate) const UNSPECIFIED_ERROR: u8 = 0x80;
pub(crate) const MALFORMED_PACKET: u8 = 0x81;
pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
pub(crate) const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub(crate) const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub(crate) const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub(crate) const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
pub(crate) const SERVER_UNAVAILABLE: u8 = 0x88;
pub(crate) const SERVER_BUSY: u8 = 0x89;
pub(crate) const BANNED: u8 = 0x8a;
pub(crate) const BAD_AUTHENTICATION_METHOD: u8 = 0x8c;
pub(crate) const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
pub(crate) const SESSION_TAKEN_OVER: u8 = 0x8e;
pub(crate) const TOPIC_FILTER_INVALID: u8 = 0x8f;
pub(crate) const TOPIC_NAME_INVALID: u8 = 0x90;
pub(crate) const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub(crate) const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub(crate) const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub(crate) const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub(crate) const PACKET_TOO_LARGE: u8 = 0x95;
pub(crate) const QUOTA_EXCEEDED: u8 = 0x97;
pub(crate) const ADMINISTRATIVE_ACTION: u8 = 0x98;
pub(crate) const RETAIN_NOT_SUPPORTED: u8 = 0x9a;
pub(crate) const QOS_NOT_SUPPORTED: u8 = 0x9b;
pub(crate) const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9e;
pub(crate) const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xa1;
pub(crate) const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xa2;
pub(crate) const SERVER_SHUTTING_DOWN: u8 = 0x8b;

/// MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
pub(crate) mod v3 {
    pub(crate) const ACCEPTED: u8 = 0;
    pub(crate) const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    pub(crate) const IDENTIFIER_REJECTED: u8 = 2;
    pub(crate) const SERVER_UNAVAILABLE: u8 = 3;
    pub(crate) const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
    pub(crate) const NOT_AUTHORIZED: u8 = 5;
}

/// The MQTT 3.1.1 CONNACK return code for an MQTT 5 CONNACK reason code.
pub(crate) fn connack_v3(code: u8) -> u8 {
    match code {
        SUCCESS => v3::ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => v3::UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => v3::IDENTIFIER_REJECTED,
        BAD_USER_NAME_OR_PASSWORD => v3::BAD_USER_NAME_OR_PASSWORD,
        // MQTT 3.1.1 has no "banned": a banned client is not authorized (as EMQX answers it).
        NOT_AUTHORIZED | BAD_AUTHENTICATION_METHOD | BANNED => v3::NOT_AUTHORIZED,
        _ => v3::SERVER_UNAVAILABLE,
    }
}

/// The MQTT 3.1.1 SUBACK code for an MQTT 5 one: a granted QoS, or 0x80 for any failure.
pub(crate) fn suback_v3(code: u8) -> u8 {
    if code < 0x80 {
        code
    } else {
        0x80
    }
}

/// The Reason String for `code` in a packet that is `base_len` bytes without it, if the
/// packet still fits in `max_packet_size` with it: a reason string is left out rather than
/// make a packet bigger than the client accepts (MQTT-3.1.2-25, and the same rule for each
/// packet that carries one). Conservative by a few bytes (length fields may grow).
pub(crate) fn string_within(code: u8, base_len: usize, max_packet_size: usize) -> Option<&'static str> {
    let text = describe(code);
    (!text.is_empty() && base_len + 3 + text.len() + 3 <= max_packet_size).then_some(text)
}

/// A short text for a reason code, sent as the Reason String of MQTT 5 acknowledgements that
/// are not a success (when the client asked for problem information).
pub(crate) fn describe(code: u8) -> &'static str {
    match code {
        NO_MATCHING_SUBSCRIBERS => "no matching subscribers",
        NO_SUBSCRIPTION_EXISTED => "no subscription existed",
        UNSPECIFIED_ERROR => "unspecified error",
        MALFORMED_PACKET => "malformed packet",
        PROTOCOL_ERROR => "protocol error",
        IMPLEMENTATION_SPECIFIC_ERROR => "implementation specific error",
        UNSUPPORTED_PROTOCOL_VERSION => "unsupported protocol version",
        CLIENT_IDENTIFIER_NOT_VALID => "client identifier not valid",
        BAD_USER_NAME_OR_PASSWORD => "bad user name or password",
        NOT_AUTHORIZED => "not authorized",
        SERVER_UNAVAILABLE => "server unavailable",
        SERVER_BUSY => "server busy",
        BANNED => "banned",
        BAD_AUTHENTICATION_METHOD => "bad authentication method",
        KEEP_ALIVE_TIMEOUT => "keep alive timeout",
        SESSION_TAKEN_OVER => "session taken over",
        TOPIC_FILTER_INVALID => "topic filter invalid",
        TOPIC_NAME_INVALID => "topic name invalid",
        PACKET_IDENTIFIER_IN_USE => "packet identifier in use",
        PACKET_IDENTIFIER_NOT_FOUND => "packet identifier not found",
        RECEIVE_MAXIMUM_EXCEEDED => "receive maximum exceeded",
        TOPIC_ALIAS_INVALID => "topic alias invalid",
        PACKET_TOO_LARGE => "packet too large",
        QUOTA_EXCEEDED => "quota exceeded",
        ADMINISTRATIVE_ACTION => "administrative action",
        RETAIN_NOT_SUPPORTED => "retain not supported",
        QOS_NOT_SUPPORTED => "qos not supported",
        SHARED_SUBSCRIPTIONS_NOT_SUPPORTED => "shared subscriptions not supported",
        SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED => "subscription identifiers not supported",
        WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED => "wildcard subscriptions not supported",
        SERVER_SHUTTING_DOWN => "server shutting down",
        _ => "",
    }
}
