//! The MQTT wire format (3.1, 3.1.1 and 5), both ways: what a client sends is decoded
//! borrowing from the frame (no copies), what the broker sends is encoded straight into the
//! connection's write buffer.
//!
//! - `frame`: fixed header, remaining length, packet types;
//! - `reader`: the cursor every decoder uses, and the two ways a packet can be wrong;
//! - `properties`: the MQTT 5 property block, read and written;
//! - `connect`, `publish`, `subscribe`, `disconnect`: one file per packet family;
//! - `packet`: what a client may send, as one enum;
//! - `reason`: reason codes, and their MQTT 3.1.1 equivalents.

pub(crate) mod connect;
pub(crate) mod disconnect;
pub(crate) mod frame;
pub(crate) mod packet;
pub(crate) mod properties;
pub(crate) mod publish;
pub(crate) mod reader;
pub(crate) mod reason;
pub(crate) mod subscribe;

#[cfg(test)]
mod differential;

/// The protocol level a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V3_1 = 3,
    /// MQTT 3.1.1 (level 4).
    V3_1_1 = 4,
    /// MQTT 5 (level 5).
    V5 = 5,
}

impl Version {
    pub(crate) fn is_v5(self) -> bool {
        self == Version::V5
    }

    /// The protocol level byte.
    pub(crate) fn level(self) -> u8 {
        self as u8
    }
}
