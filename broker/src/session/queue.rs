//! The messages waiting for a session: while its client is offline, and while its inflight
//! window or its socket is full. Bounded by `mqtt.max_mqueue_len`; what a full queue does is
//! the session's choice ([`crate::session::Session::enqueue`]), made of three ways to push:
//! unbounded, keeping every QoS 1/2 message already queued, or dropping the oldest.

use std::collections::VecDeque;

use crate::message::Delivery;

#[derive(Debug, Default)]
pub(crate) struct MessageQueue {
    items: VecDeque<Delivery>,
    /// QoS 0 deliveries in `items`.
    qos0: usize,
}

impl MessageQueue {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Appends `delivery`, whatever the queue holds.
    pub(crate) fn push(&mut self, delivery: Delivery) {
        self.qos0 += usize::from(delivery.qos == 0);
        self.items.push_back(delivery);
    }

    /// Appends `delivery` unless the queue holds `max_len` messages or more; then the oldest
    /// QoS 0 message makes room, and with none `delivery` itself is returned, not queued. A
    /// QoS 1/2 message already queued is never dropped.
    pub(crate) fn push_keeping(&mut self, delivery: Delivery, max_len: usize) -> Option<Delivery> {
        let dropped = if self.items.len() >= max_len {
            if self.qos0 == 0 {
                return Some(delivery);
            }
            self.remove_oldest_qos0()
        } else {
            None
        };
        self.push(delivery);
        dropped
    }

    /// Appends `delivery`; when the queue holds `max_len` messages or more, the oldest QoS 0
    /// message goes first; with none, the new message if it is QoS 0, else the oldest message
    /// (EMQX's drop policy). Returns the delivery dropped, if any.
    pub(crate) fn push_dropping(&mut self, delivery: Delivery, max_len: usize) -> Option<Delivery> {
        if self.items.len() < max_len || self.qos0 > 0 || delivery.qos == 0 {
            return self.push_keeping(delivery, max_len);
        }
        let dropped = self.pop_front();
        self.push(delivery);
        dropped
    }

    fn remove_oldest_qos0(&mut self) -> Option<Delivery> {
        let index = self.items.iter().position(|d| d.qos == 0)?;
        let d = self.items.remove(index)?;
        self.qos0 -= 1;
        Some(d)
    }

    /// The queued deliveries, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    pub(crate) fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.qos0 -= usize::from(d.qos == 0);
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new(); // a burst is over: give its memory back
        }
        Some(d)
    }

    /// Empties the queue, returning what it held.
    pub(crate) fn take(&mut self) -> VecDeque<Delivery> {
        self.qos0 = 0;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: u8, n: u8) -> Delivery {
        Delivery::for_test(qos, &[n])
    }

    fn contents(q: &MessageQueue) -> Vec<(u8, u8)> {
        q.items.iter().map(|d| (d.qos, d.message.payload()[0])).collect()
    }

    fn payload(d: Option<Delivery>) -> Option<u8> {
        d.map(|d| d.message.payload()[0])
    }

    #[test]
    fn dropping_takes_the_oldest_qos0_first_when_full() {
        let mut q = MessageQueue::default();
        assert!(q.push_dropping(delivery(1, 1), 3).is_none());
        assert!(q.push_dropping(delivery(0, 2), 3).is_none());
        assert!(q.push_dropping(delivery(0, 3), 3).is_none());
        assert_eq!(payload(q.push_dropping(delivery(1, 4), 3)), Some(2));
        assert_eq!(payload(q.push_dropping(delivery(1, 5), 3)), Some(3));
        assert_eq!(contents(&q), vec![(1, 1), (1, 4), (1, 5)]);
        // No QoS 0 left: a new QoS 0 message is the one dropped, a QoS 1 drops the oldest.
        assert_eq!(payload(q.push_dropping(delivery(0, 6), 3)), Some(6));
        assert_eq!(payload(q.push_dropping(delivery(1, 7), 3)), Some(1));
        assert_eq!(contents(&q), vec![(1, 4), (1, 5), (1, 7)]);
    }

    #[test]
    fn keeping_never_drops_a_queued_qos1_message() {
        let mut q = MessageQueue::default();
        assert!(q.push_keeping(delivery(1, 1), 2).is_none());
        assert!(q.push_keeping(delivery(0, 2), 2).is_none());
        // Full: the oldest QoS 0 makes room; then the newcomer is refused, whatever its QoS.
        assert_eq!(payload(q.push_keeping(delivery(1, 3), 2)), Some(2));
        assert_eq!(payload(q.push_keeping(delivery(1, 4), 2)), Some(4));
        assert_eq!(payload(q.push_keeping(delivery(0, 5), 2)), Some(5));
        assert_eq!(contents(&q), vec![(1, 1), (1, 3)]);
        // Unbounded pushes go beyond the limit.
        q.push(delivery(1, 6));
        assert_eq!((q.len(), q.qos0), (3, 0));
        assert_eq!(payload(q.pop_front()), Some(1));
    }
}
