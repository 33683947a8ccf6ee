//! Refilling a subscriber's inflight window in batches, not a slot at a time.
//!
//! A subscriber that acknowledges its QoS 1 and 2 messages one by one frees its window
//! (`mqtt.max_inflight`, lowered by its Receive Maximum) one slot at a time. Filling each slot
//! as soon as it frees means a write of a few messages for every few acknowledgements read:
//! in a fan-in burst (10 publishers, one subscriber, window 100) about 15 messages a write,
//! 30,000 writes for 100,000 messages. This is the silly window syndrome TCP senders avoid
//! (RFC 1122, 4.2.3.4), and the remedy is the same: while messages wait and less than a
//! quarter of the window is free, the connection waits until a quarter is free or
//! [`MAX_HOLD`] has passed, whichever comes first, then fills what is free in one write.
//!
//! It never holds when the waiting messages all fit in what is free (a message at a low rate
//! goes at once), when nothing is in flight, with a window under 4 (a quarter of it is less
//! than one slot), nor once the session's queue is three quarters full (`mqtt.max_mqueue_len`)
//! or publishers wait for it: messages held while the window has room must not fill the
//! queue, which would drop them or slow their publishers down (overload protection). A
//! client that acknowledges only after it has the next message still gets it within
//! [`MAX_HOLD`]. The timer is armed only while a hold lasts: an idle connection holds none.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// The longest a free slot of the window waits for others to free beside it.
pub(super) const MAX_HOLD: Duration = Duration::from_millis(1);

/// Whether a connection is holding its window's refill back, and until when.
#[derive(Debug, Default)]
pub(super) struct RefillHold {
    /// Runs while a hold lasts; boxed, as most connections never hold.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer ran out: the next refill sends what is free, however little.
    expired: bool,
}

impl RefillHold {
    /// Whether QoS 1 and 2 messages wait this round: `free` slots of a `window`, `waiting`
    /// messages queued with a QoS 1 or 2 one at the front. Arms the timer when a hold begins.
    pub(super) fn holds(&mut self, window: usize, free: usize, waiting: usize) -> bool {
        let expired = std::mem::take(&mut self.expired);
        let worth_waiting = free > 0 && free < window / 4 && waiting > free;
        if !worth_waiting || expired {
            self.timer = None;
            return false;
        }
        if self.timer.is_none() {
            self.timer = Some(Box::pin(tokio::time::sleep(MAX_HOLD)));
        }
        true
    }

    /// Whether the hold just ran out (the connection then refills its window); registers
    /// the task to be woken when it does.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !super::ran_out(&mut self.timer, cx) {
            return false;
        }
        self.expired = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hold_needs_a_sliver_of_free_window_and_more_waiting_than_fits() {
        let mut hold = RefillHold::default();
        // Nothing free: nothing could be sent, so there is nothing to hold (and no timer).
        assert!(!hold.holds(100, 0, 500));
        assert!(hold.timer.is_none());
        // A quarter or more free: sent at once.
        assert!(!hold.holds(100, 25, 500));
        // Everything waiting fits: sent at once.
        assert!(!hold.holds(100, 10, 10));
        // A window of 3: a quarter is under one slot, never held.
        assert!(!hold.holds(3, 1, 500));
        assert!(hold.timer.is_none());
        // A sliver free, more waiting: held, with the timer armed.
        assert!(hold.holds(100, 10, 500));
        assert!(hold.timer.is_some());
        // Enough acknowledged meanwhile: the hold ends and its timer goes.
        assert!(!hold.holds(100, 30, 500));
        assert!(hold.timer.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_runs_out_once_then_the_next_refill_sends_what_is_free() {
        let mut hold = RefillHold::default();
        assert!(hold.holds(100, 1, 500));
        let expired = std::future::poll_fn(|cx| {
            if hold.poll_expired(cx) {
                std::task::Poll::Ready(tokio::time::Instant::now())
            } else {
                std::task::Poll::Pending
            }
        });
        let start = tokio::time::Instant::now();
        let at = expired.await;
        assert_eq!(at - start, MAX_HOLD);
        // Ran out: the next round sends, and the one after may hold again.
        assert!(!hold.holds(100, 1, 500));
        assert!(hold.holds(100, 1, 500));
    }
}
