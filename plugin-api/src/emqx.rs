//! EMQX's ways of writing broker facts, for plugins that show them as EMQX does (and used by
//! the host for `$SYS` and `broker ctl broker`).

/// What this broker says it is in `sysdescr` (`$SYS`, `broker ctl broker`, the management
/// API); EMQX says `EMQ X Broker`.
pub const SYSDESCR: &str = "MQTT broker with plugins";

/// Uptime as EMQX 4.x words it (`emqx_sys:uptime/0`): `42 seconds`,
/// `3 minutes, 42 seconds`, `2 hours, 0 minutes, 42 seconds`,
/// `1 days, 0 hours, 3 minutes, 42 seconds`.
pub fn uptime(seconds: u64) -> String {
    let (days, hours, minutes, seconds) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds} seconds"),
        (0, 0, _) => format!("{minutes} minutes, {seconds} seconds"),
        (0, _, _) => format!("{hours} hours, {minutes} minutes, {seconds} seconds"),
        _ => format!("{days} days, {hours} hours, {minutes} minutes, {seconds} seconds"),
    }
}

/// The local date and time now as EMQX writes it (`emqx_sys:datetime/0`):
/// `2026-11-27 01:02:03`.
pub fn datetime() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    datetime_at(now as u64)
}

/// The local date and time at `ms` (milliseconds since the Unix epoch) as EMQX writes it:
/// `2026-11-27 01:02:03`.
pub fn datetime_at(ms: u64) -> String {
    let now = libc::time_t::try_from(ms / 1000).unwrap_or_default();
    // SAFETY: localtime_r writes only into `tm`, which we own; `now` is a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// EMQX's name for a CONNACK code (`return_code` of a `client.connack` event), as the web
/// hook and exhook send it (`emqx_reason_codes:name/1` of the MQTT 5 reason code, as
/// EMQX's `client.connack` hook gets it): `success`, `not_authorized`, ... An MQTT 3.1.1
/// return code is named as the MQTT 5 code it stands for.
pub fn connack_name(proto_ver: u8, code: u32) -> &'static str {
    let code = if proto_ver >= 5 {
        code
    } else {
        match code {
            0 => 0x00,
            1 => 0x84,
            2 => 0x85,
            3 => 0x88,
            4 => 0x86,
            5 => 0x87,
            _ => 0x80,
        }
    };
    match code {
        0x00 => "success",
        0x81 => "malformed_packet",
        0x82 => "protocol_error",
        0x83 => "implementation_specific_error",
        0x84 => "unsupported_protocol_version",
        0x85 => "client_identifier_not_valid",
        0x86 => "bad_username_or_password",
        0x87 => "not_authorized",
        0x88 => "server_unavailable",
        0x89 => "server_busy",
        0x8A => "banned",
        0x8C => "bad_authentication_method",
        0x90 => "topic_name_invalid",
        0x95 => "packet_too_large",
        0x97 => "quota_exceeded",
        0x99 => "payload_format_invalid",
        0x9A => "retain_not_supported",
        0x9B => "qos_not_supported",
        0x9C => "use_another_server",
        0x9D => "server_moved",
        0x9F => "connection_rate_exceeded",
        0x80 => "unspecified_error",
        _ => "unknown_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_worded_as_emqx_words_it() {
        assert_eq!(uptime(7), "7 seconds");
        assert_eq!(uptime(3 * 60 + 42), "3 minutes, 42 seconds");
        assert_eq!(uptime(2 * 3600 + 42), "2 hours, 0 minutes, 42 seconds");
        assert_eq!(uptime(86_400 + 3 * 60 + 42), "1 days, 0 hours, 3 minutes, 42 seconds");
    }

    #[test]
    fn datetime_has_emqx_shape() {
        let text = datetime();
        let shape: String = text.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
        assert_eq!(shape, "9999-99-99 99:99:99", "{text}");
    }

    #[test]
    fn connack_codes_are_named_as_emqx_names_them() {
        assert_eq!(connack_name(4, 0), "success");
        assert_eq!(connack_name(4, 5), "not_authorized");
        assert_eq!(connack_name(4, 4), "bad_username_or_password");
        assert_eq!(connack_name(5, 0x8A), "banned");
        assert_eq!(connack_name(5, 0x86), "bad_username_or_password");
        assert_eq!(connack_name(5, 0x42), "unknown_error");
    }
}
