//! The messages waiting for a session: while its client is offline, and while its inflight
//! window is full. Bounded (EMQX's `max_mqueue_len`): when full, the oldest QoS 0 message
//! goes first; with none, the new message if it is QoS 0, else the oldest message.

use std::collections::VecDeque;

use crate::message::Delivery;

#[derive(Debug, Default)]
pub(crate) struct MessageQueue {
    items: VecDeque<Delivery>,
    /// QoS 0 deliveries in `items`.
    qos0: usize,
}

impl MessageQueue {
    /// Appends `delivery`; returns the delivery dropped to make room, if any. `max_len` 0
    /// means no limit.
    pub(crate) fn push(&mut self, delivery: Delivery, max_len: usize) -> Option<Delivery> {
        let dropped = if max_len > 0 && self.items.len() >= max_len {
            if self.qos0 > 0 {
                let oldest = self.items.iter().position(|d| d.qos == 0)?;
                self.remove(oldest)
            } else if delivery.qos == 0 {
                return Some(delivery);
            } else {
                self.pop_front()
            }
        } else {
            None
        };
        self.qos0 += usize::from(delivery.qos == 0);
        self.items.push_back(delivery);
        dropped
    }

    fn remove(&mut self, index: usize) -> Option<Delivery> {
        let d = self.items.remove(index)?;
        self.qos0 -= usize::from(d.qos == 0);
        Some(d)
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
        q.items.iter().map(|d| (d.qos, d.message.payload[0])).collect()
    }

    #[test]
    fn the_oldest_qos0_goes_first_when_full() {
        let mut q = MessageQueue::default();
        assert!(q.push(delivery(1, 1), 3).is_none());
        assert!(q.push(delivery(0, 2), 3).is_none());
        assert!(q.push(delivery(0, 3), 3).is_none());
        assert_eq!(q.push(delivery(1, 4), 3).map(|d| d.message.payload[0]), Some(2));
        assert_eq!(q.push(delivery(1, 5), 3).map(|d| d.message.payload[0]), Some(3));
        assert_eq!(contents(&q), vec![(1, 1), (1, 4), (1, 5)]);
        // No QoS 0 left: a new QoS 0 message is the one dropped, a QoS 1 drops the oldest.
        assert_eq!(q.push(delivery(0, 6), 3).map(|d| d.message.payload[0]), Some(6));
        assert_eq!(q.push(delivery(1, 7), 3).map(|d| d.message.payload[0]), Some(1));
        assert_eq!(contents(&q), vec![(1, 4), (1, 5), (1, 7)]);
    }

    #[test]
    fn zero_is_no_limit() {
        let mut q = MessageQueue::default();
        for n in 0..100 {
            assert!(q.push(delivery(0, n), 0).is_none());
        }
        assert_eq!(q.items.len(), 100);
        assert_eq!(q.pop_front().map(|d| d.message.payload[0]), Some(0));
    }
}
