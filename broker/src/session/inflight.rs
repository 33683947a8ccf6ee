//! QoS 1 and 2 messages sent to the client and not yet acknowledged, in the order they were
//! sent (resent in that order on reconnect, MQTT-4.4.0-1), and their packet ids, which are
//! never reused while in flight (MQTT-2.3.1-2).

use std::collections::VecDeque;

use crate::message::Delivery;

/// The acknowledgement a message in flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// QoS 1: PUBACK.
    Puback,
    /// QoS 2: PUBREC.
    Pubrec,
    /// QoS 2, PUBREL sent: PUBCOMP.
    Pubcomp,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) packet_id: u16,
    pub(crate) phase: Phase,
    pub(crate) delivery: Delivery,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    entries: VecDeque<Entry>,
    next_id: u16,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight { entries: VecDeque::new(), next_id: 1 }
    }
}

/// What a PUBREC settles.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecOutcome {
    /// Answer with PUBREL.
    Release,
    /// The client refused the message (reason code 0x80 or above): it is done.
    Refused,
    /// No message in flight has that id.
    Unknown,
}

impl Inflight {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// A packet id not in flight.
    pub(crate) fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.entries.iter().any(|e| e.packet_id == id) {
                return id;
            }
        }
    }

    pub(crate) fn push(&mut self, packet_id: u16, delivery: Delivery) {
        let phase = if delivery.qos == 1 { Phase::Puback } else { Phase::Pubrec };
        self.entries.push_back(Entry { packet_id, phase, delivery });
    }

    fn position(&self, packet_id: u16, phase: Phase) -> Option<usize> {
        self.entries.iter().position(|e| e.packet_id == packet_id && e.phase == phase)
    }

    /// A PUBACK: the acknowledged delivery, if it was in flight.
    pub(crate) fn puback(&mut self, packet_id: u16) -> Option<Delivery> {
        let index = self.position(packet_id, Phase::Puback)?;
        self.entries.remove(index).map(|e| e.delivery)
    }

    /// A PUBREC with `reason`.
    pub(crate) fn pubrec(&mut self, packet_id: u16, reason: u8) -> RecOutcome {
        if self.position(packet_id, Phase::Pubcomp).is_some() {
            return RecOutcome::Release; // a PUBREC again (after a reconnect): PUBREL again
        }
        let Some(index) = self.position(packet_id, Phase::Pubrec) else {
            return RecOutcome::Unknown;
        };
        if reason >= 0x80 {
            self.entries.remove(index);
            return RecOutcome::Refused;
        }
        self.entries[index].phase = Phase::Pubcomp;
        RecOutcome::Release
    }

    /// A PUBCOMP: the completed delivery, if it was in flight.
    pub(crate) fn pubcomp(&mut self, packet_id: u16) -> Option<Delivery> {
        let index = self.position(packet_id, Phase::Pubcomp)?;
        self.entries.remove(index).map(|e| e.delivery)
    }

    /// Takes the entry with `packet_id` out, whatever it waits for.
    pub(crate) fn remove(&mut self, packet_id: u16) -> Option<Entry> {
        let index = self.entries.iter().position(|e| e.packet_id == packet_id)?;
        self.entries.remove(index)
    }

    /// Every entry, oldest first (for resending after a reconnect).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Empties it, returning what it held.
    pub(crate) fn take(&mut self) -> VecDeque<Entry> {
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: u8) -> Delivery {
        Delivery::for_test(qos, b"")
    }

    #[test]
    fn ids_in_flight_are_never_reused() {
        let mut inflight = Inflight { entries: VecDeque::new(), next_id: u16::MAX };
        let a = inflight.next_packet_id();
        inflight.push(a, delivery(1));
        let b = inflight.next_packet_id();
        assert_eq!((a, b), (u16::MAX, 1), "wraps past 0");
        inflight.push(b, delivery(1));
        inflight.next_id = u16::MAX;
        assert_eq!(inflight.next_packet_id(), 2, "skips the ids in flight");
    }

    #[test]
    fn qos2_goes_through_its_phases() {
        let mut inflight = Inflight::default();
        let id = inflight.next_packet_id();
        inflight.push(id, delivery(2));
        assert!(inflight.puback(id).is_none(), "a PUBACK does not settle QoS 2");
        assert!(inflight.pubcomp(id).is_none(), "nor a PUBCOMP before PUBREC");
        assert_eq!(inflight.pubrec(id, 0), RecOutcome::Release);
        assert_eq!(inflight.iter().next().unwrap().phase, Phase::Pubcomp);
        assert_eq!(inflight.pubrec(id, 0), RecOutcome::Release, "a repeated PUBREC gets PUBREL again");
        assert!(inflight.pubcomp(id).is_some());
        assert_eq!(inflight.len(), 0);
        assert_eq!(inflight.pubrec(99, 0), RecOutcome::Unknown);
        let id = inflight.next_packet_id();
        inflight.push(id, delivery(2));
        assert_eq!(inflight.pubrec(id, 0x87), RecOutcome::Refused);
        assert_eq!(inflight.len(), 0);
    }
}
