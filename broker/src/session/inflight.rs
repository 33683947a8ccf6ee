//! QoS 1 and 2 messages sent to the client and not yet acknowledged, in the order they were
//! sent (resent in that order on reconnect, MQTT-4.4.0-1, and to an MQTT 3.1.1 client after
//! `mqtt.retry_interval`), and their packet ids, which are never reused while in flight
//! (MQTT-2.3.1-2).

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
    /// To be sent again (the session was resumed, or it is overdue) and not sent yet: the
    /// client's Receive Maximum had no room for it (it is sent again, in order, as the window
    /// frees).
    pub(crate) unsent: bool,
    /// In flight already at the last [`Inflight::mark_overdue`] round, and not sent since.
    overdue_next: bool,
}

/// From this many messages in flight on, ids in use are also kept in a bitmap, so that
/// finding a free id stays O(1) where a scan of the window would make a client that never
/// acknowledges (with a large `mqtt.max_inflight`) cost the broker quadratic time.
const BITMAP_FROM: usize = 128;

#[derive(Debug)]
pub(crate) struct Inflight {
    entries: VecDeque<Entry>,
    /// How many entries are `unsent`.
    unsent: usize,
    next_id: u16,
    /// Bit `id` set while `id` is in flight; only while the window holds many (8 KiB).
    in_use: Option<Box<[u64; 1024]>>,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight { entries: VecDeque::new(), unsent: 0, next_id: 1, in_use: None }
    }
}

/// What a PUBACK or a PUBCOMP settles.
#[derive(Debug)]
pub(crate) enum Acked {
    /// The delivery it completes.
    Settled(Delivery),
    /// No message in flight has that id.
    Unknown,
    /// The message with that id waits for another acknowledgement (a PUBACK for QoS 2, a
    /// PUBCOMP for QoS 1 or before PUBREC): a protocol error, as mosquitto has it.
    WrongType,
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
    /// The message with that id is QoS 1 (a protocol error).
    WrongType,
}

impl Inflight {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is in flight.
    pub(crate) fn is_in_use(&self, id: u16) -> bool {
        match &self.in_use {
            Some(bits) => bits[usize::from(id) / 64] & (1 << (id % 64)) != 0,
            None => self.entries.iter().any(|e| e.packet_id == id),
        }
    }

    /// A packet id not in flight. The caller keeps the window below 65535 (`max_inflight` is
    /// a `u16` and a window of 65535 leaves none to find only when every id is taken, which
    /// the window check prevents), so there always is one.
    pub(crate) fn next_packet_id(&mut self) -> u16 {
        debug_assert!(self.entries.len() < usize::from(u16::MAX), "a free packet id exists");
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.is_in_use(id) {
                return id;
            }
        }
    }

    /// The sequence number (a persistent session's, else 0) of the message in flight as
    /// `packet_id`.
    pub(crate) fn seq_of(&self, packet_id: u16) -> Option<u64> {
        self.entries.iter().find(|e| e.packet_id == packet_id).map(|e| e.delivery.seq)
    }

    /// Puts back a QoS 2 message whose PUBREC came before a restart: PUBREL is what is resent.
    pub(crate) fn push_released(&mut self, packet_id: u16, delivery: Delivery) {
        self.push(packet_id, delivery);
        if let Some(entry) = self.entries.back_mut() {
            entry.phase = Phase::Pubcomp;
        }
    }

    pub(crate) fn push(&mut self, packet_id: u16, delivery: Delivery) {
        let phase = if delivery.qos == 1 { Phase::Puback } else { Phase::Pubrec };
        self.entries.push_back(Entry { packet_id, phase, delivery, unsent: false, overdue_next: false });
        match &mut self.in_use {
            Some(bits) => bits[usize::from(packet_id) / 64] |= 1 << (packet_id % 64),
            None if self.entries.len() >= BITMAP_FROM => {
                let mut bits = Box::new([0u64; 1024]);
                for id in self.entries.iter().map(|e| e.packet_id) {
                    bits[usize::from(id) / 64] |= 1 << (id % 64);
                }
                self.in_use = Some(bits);
            }
            None => {}
        }
    }

    /// Takes the entry at `index` out, keeping the bitmap in step.
    fn take_at(&mut self, index: usize) -> Option<Entry> {
        let entry = self.entries.remove(index)?;
        self.unsent -= usize::from(entry.unsent);
        if let Some(bits) = &mut self.in_use {
            bits[usize::from(entry.packet_id) / 64] &= !(1 << (entry.packet_id % 64));
            if self.entries.is_empty() {
                self.in_use = None;
            }
        }
        Some(entry)
    }

    fn position(&self, packet_id: u16, phase: Phase) -> Option<usize> {
        self.entries.iter().position(|e| e.packet_id == packet_id && e.phase == phase)
    }

    /// A PUBACK: the acknowledged delivery, if it was in flight.
    pub(crate) fn puback(&mut self, packet_id: u16) -> Acked {
        match self.position(packet_id, Phase::Puback) {
            Some(index) => self.settle(index),
            None => self.missed(packet_id),
        }
    }

    /// A PUBREC with `reason`.
    pub(crate) fn pubrec(&mut self, packet_id: u16, reason: u8) -> RecOutcome {
        if self.position(packet_id, Phase::Pubcomp).is_some() {
            return RecOutcome::Release; // a PUBREC again (after a reconnect): PUBREL again
        }
        let Some(index) = self.position(packet_id, Phase::Pubrec) else {
            return match self.missed(packet_id) {
                Acked::WrongType => RecOutcome::WrongType,
                _ => RecOutcome::Unknown,
            };
        };
        if reason >= 0x80 {
            self.take_at(index);
            return RecOutcome::Refused;
        }
        let entry = &mut self.entries[index];
        entry.phase = Phase::Pubcomp;
        entry.overdue_next = false; // its PUBREL is sent now
        RecOutcome::Release
    }

    /// A PUBCOMP: the completed delivery, if it was in flight.
    pub(crate) fn pubcomp(&mut self, packet_id: u16) -> Acked {
        match self.position(packet_id, Phase::Pubcomp) {
            Some(index) => self.settle(index),
            None => self.missed(packet_id),
        }
    }

    fn settle(&mut self, index: usize) -> Acked {
        self.take_at(index).map_or(Acked::Unknown, |e| Acked::Settled(e.delivery))
    }

    /// An acknowledgement for `packet_id` that settles nothing: for an id not in flight, or
    /// of the wrong type for the message with that id.
    fn missed(&self, packet_id: u16) -> Acked {
        if self.entries.iter().any(|e| e.packet_id == packet_id) {
            Acked::WrongType
        } else {
            Acked::Unknown
        }
    }

    /// Takes the entry with `packet_id` out, whatever it waits for.
    pub(crate) fn remove(&mut self, packet_id: u16) -> Option<Entry> {
        let index = self.entries.iter().position(|e| e.packet_id == packet_id)?;
        self.take_at(index)
    }

    /// Every entry, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Marks every entry to be sent again after a reconnect (MQTT-4.4.0-1), for
    /// [`Inflight::next_unsent`] to give out as the window allows (the client's Receive
    /// Maximum counts them all, MQTT-3.3.4-9).
    pub(crate) fn mark_unsent(&mut self) {
        for entry in &mut self.entries {
            entry.unsent = true;
        }
        self.unsent = self.entries.len();
    }

    /// One round of sending again while the client stays connected (MQTT 3.1.1 only, every
    /// `mqtt.retry_interval`, as EMQX does): marks to be sent again each entry that was in
    /// flight at the round before and has not been sent since, so a message goes again one
    /// to two intervals after it was sent, never sooner. Returns how many it marked.
    pub(crate) fn mark_overdue(&mut self) -> usize {
        let mut marked = 0;
        for entry in self.entries.iter_mut().filter(|e| !e.unsent) {
            if entry.overdue_next {
                entry.unsent = true;
                entry.overdue_next = false;
                marked += 1;
            } else {
                entry.overdue_next = true;
            }
        }
        self.unsent += marked;
        marked
    }

    /// Whether some entry is still to be sent again (after a reconnect, or overdue).
    #[inline]
    pub(crate) fn has_unsent(&self) -> bool {
        self.unsent != 0
    }

    /// The oldest entry still to be sent again, now marked sent, if the window has room for
    /// it (fewer than `window` entries sent).
    pub(crate) fn next_unsent(&mut self, window: usize) -> Option<&Entry> {
        if self.unsent == 0 || self.entries.len() - self.unsent >= window {
            return None;
        }
        let entry = self.entries.iter_mut().find(|e| e.unsent)?;
        entry.unsent = false;
        entry.overdue_next = false;
        self.unsent -= 1;
        Some(entry)
    }

    /// Empties it, returning what it held.
    pub(crate) fn take(&mut self) -> VecDeque<Entry> {
        self.unsent = 0;
        self.in_use = None;
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
        let mut inflight = Inflight { next_id: u16::MAX, ..Default::default() };
        let a = inflight.next_packet_id();
        inflight.push(a, delivery(1));
        let b = inflight.next_packet_id();
        assert_eq!((a, b), (u16::MAX, 1), "wraps past 0");
        inflight.push(b, delivery(1));
        inflight.next_id = u16::MAX;
        assert_eq!(inflight.next_packet_id(), 2, "skips the ids in flight");
    }

    #[test]
    fn a_full_window_of_unacknowledged_ids_is_skipped_through_the_bitmap() {
        let mut inflight = Inflight::default();
        // 65534 in flight, never acknowledged: each id is found without scanning the window.
        let ids: Vec<u16> = (0..u16::MAX - 1)
            .map(|_| {
                let id = inflight.next_packet_id();
                inflight.push(id, delivery(1));
                id
            })
            .collect();
        assert!(inflight.in_use.is_some());
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), u16::MAX - 1);
        // The one id left is found; acknowledging one frees exactly that one.
        assert_eq!(inflight.next_packet_id(), u16::MAX);
        assert!(matches!(inflight.puback(7), Acked::Settled(_)));
        assert_eq!(inflight.next_packet_id(), 7);
        // Emptied, the bitmap goes (an idle session keeps no 8 KiB).
        for id in ids.into_iter().filter(|&id| id != 7) {
            assert!(matches!(inflight.puback(id), Acked::Settled(_)));
        }
        assert_eq!((inflight.len(), inflight.in_use.is_none()), (0, true));
    }

    #[test]
    fn qos2_goes_through_its_phases() {
        let mut inflight = Inflight::default();
        let id = inflight.next_packet_id();
        inflight.push(id, delivery(2));
        assert!(matches!(inflight.puback(id), Acked::WrongType), "a PUBACK does not settle QoS 2");
        assert!(matches!(inflight.pubcomp(id), Acked::WrongType), "nor a PUBCOMP before PUBREC");
        assert_eq!(inflight.pubrec(id, 0), RecOutcome::Release);
        assert_eq!(inflight.entries.front().unwrap().phase, Phase::Pubcomp);
        assert_eq!(inflight.pubrec(id, 0), RecOutcome::Release, "a repeated PUBREC gets PUBREL again");
        assert!(matches!(inflight.pubcomp(id), Acked::Settled(_)));
        assert_eq!(inflight.len(), 0);
        assert_eq!(inflight.pubrec(99, 0), RecOutcome::Unknown);
        assert!(matches!(inflight.pubcomp(99), Acked::Unknown));
        let id = inflight.next_packet_id();
        inflight.push(id, delivery(2));
        assert_eq!(inflight.pubrec(id, 0x87), RecOutcome::Refused);
        assert_eq!(inflight.len(), 0);
    }

    #[test]
    fn an_acknowledgement_of_the_wrong_type_is_told_apart_from_an_unknown_id() {
        let mut inflight = Inflight::default();
        let id = inflight.next_packet_id();
        inflight.push(id, delivery(1));
        assert_eq!(inflight.pubrec(id, 0), RecOutcome::WrongType, "PUBREC for QoS 1");
        assert!(matches!(inflight.pubcomp(id), Acked::WrongType), "PUBCOMP for QoS 1");
        assert!(matches!(inflight.puback(id + 1), Acked::Unknown));
        assert!(matches!(inflight.puback(id), Acked::Settled(_)));
    }

    #[test]
    fn after_a_reconnect_only_a_window_is_sent_again_and_the_rest_as_it_frees() {
        let mut inflight = Inflight::default();
        let ids: Vec<u16> = (0..3)
            .map(|_| {
                let id = inflight.next_packet_id();
                inflight.push(id, delivery(1));
                id
            })
            .collect();
        inflight.mark_unsent();
        assert_eq!(inflight.next_unsent(1).map(|e| e.packet_id), Some(ids[0]), "a Receive Maximum of 1");
        assert!(inflight.next_unsent(1).is_none(), "the window is full");
        assert!(matches!(inflight.puback(ids[0]), Acked::Settled(_)));
        assert_eq!(inflight.next_unsent(1).map(|e| e.packet_id), Some(ids[1]), "in the order first sent");
        assert!(inflight.next_unsent(1).is_none());
        // An acknowledgement of one not sent again yet (the client had it) settles it too.
        assert!(matches!(inflight.puback(ids[2]), Acked::Settled(_)));
        assert!(matches!(inflight.puback(ids[1]), Acked::Settled(_)));
        assert!(inflight.next_unsent(1).is_none());
        assert_eq!((inflight.len(), inflight.unsent), (0, 0));
    }

    #[test]
    fn a_message_is_overdue_only_after_a_whole_round_and_goes_again_once_a_round() {
        let mut inflight = Inflight::default();
        let old = inflight.next_packet_id();
        inflight.push(old, delivery(1));
        assert_eq!(inflight.mark_overdue(), 0, "sent since the last round: not yet");
        let new = inflight.next_packet_id();
        inflight.push(new, delivery(2));
        assert_eq!(inflight.mark_overdue(), 1, "in flight a whole round");
        assert_eq!(inflight.next_unsent(10).map(|e| e.packet_id), Some(old));
        assert!(inflight.next_unsent(10).is_none(), "the newer one waits its own round");
        // The next round: the newer one is due; the one just sent again is not.
        assert_eq!(inflight.mark_overdue(), 1);
        assert_eq!(inflight.next_unsent(10).map(|e| e.packet_id), Some(new));
        // Its PUBREC: the PUBREL is sent now, and is due only after a whole round of its own.
        assert_eq!(inflight.pubrec(new, 0), RecOutcome::Release);
        assert_eq!(inflight.mark_overdue(), 1, "only the QoS 1 message");
        assert_eq!(inflight.next_unsent(10).map(|e| (e.packet_id, e.phase)), Some((old, Phase::Puback)));
        assert_eq!(inflight.mark_overdue(), 1);
        assert_eq!(inflight.next_unsent(10).map(|e| (e.packet_id, e.phase)), Some((new, Phase::Pubcomp)));
        assert!(matches!(inflight.puback(old), Acked::Settled(_)));
        assert!(matches!(inflight.pubcomp(new), Acked::Settled(_)));
        assert_eq!(inflight.mark_overdue(), 0);
        assert_eq!((inflight.len(), inflight.unsent), (0, 0));
    }
}
