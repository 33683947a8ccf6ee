//! Sending unacknowledged QoS 1 and 2 messages again while an MQTT 3.1 or 3.1.1 client stays
//! connected, as EMQX does every `mqtt.retry_interval` (30 s by default).
//!
//! MQTT 3.1.1 requires a resend only when a session is resumed (§4.4) and allows it at other
//! times; MQTT 5 forbids it (MQTT-4.4.0-1 of version 5), so an MQTT 5 connection never arms
//! the timer. Every interval, while messages are in flight, each one that was already in
//! flight at the round before and has not been acknowledged or sent since is sent again, in
//! the order first sent (MQTT-4.6.0-1): a PUBLISH with DUP set (MQTT-3.3.1-1), or the PUBREL
//! of a QoS 2 message whose PUBCOMP has not come ([`Inflight::mark_overdue`]). So a message
//! goes again one to two intervals after it was sent, never sooner. The resends go out
//! through the window like a resumed session's (`Connection::pull_deliveries`).
//!
//! A round begins only while something is in flight to such a client, and one that has begun
//! runs to its end even if everything is acknowledged meanwhile: stopping and starting a
//! timer whenever the window empties would cost every message of a steady flow a timer. So a
//! connection holds a timer for at most one interval after its last message, and an idle one
//! holds none.
//!
//! [`Inflight::mark_overdue`]: crate::session::inflight::Inflight::mark_overdue

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// The resend timer of one connection.
#[derive(Debug, Default)]
pub(super) struct RetryTimer {
    /// Runs while messages are in flight; boxed, as most connections have none in flight.
    timer: Option<Pin<Box<Sleep>>>,
}

impl RetryTimer {
    /// After the connection sent what it could: starts a round of `interval` when messages
    /// are `in_flight` and none runs (`interval` is `None` for a client never sent anything
    /// again).
    pub(super) fn watch(&mut self, interval: Option<Duration>, in_flight: bool) {
        if let (Some(interval), true, None) = (interval, in_flight, &self.timer) {
            self.timer = Some(Box::pin(tokio::time::sleep(interval)));
        }
    }

    /// Whether a round just ended (the connection then marks what is overdue, and the next
    /// [`RetryTimer::watch`] starts the next round); registers the task to be woken when it
    /// does.
    pub(super) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        super::ran_out(&mut self.timer, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn due(retry: &mut RetryTimer) -> Poll<bool> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        if retry.poll_due(&mut cx) {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_begins_only_while_messages_are_in_flight() {
        let interval = Some(Duration::from_secs(30));
        let mut retry = RetryTimer::default();
        retry.watch(interval, false);
        assert!(retry.timer.is_none(), "nothing in flight: no timer");
        retry.watch(None, true);
        assert!(retry.timer.is_none(), "an MQTT 5 client (no interval): no timer");
        retry.watch(interval, true);
        assert_eq!(due(&mut retry), Poll::Pending);
        tokio::time::advance(Duration::from_secs(20)).await;
        retry.watch(interval, true);
        assert_eq!(due(&mut retry), Poll::Pending, "watching again does not restart the round");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(due(&mut retry), Poll::Ready(true));
        assert!(retry.timer.is_none(), "the next round starts with the next watch");
        retry.watch(interval, true);
        retry.watch(interval, false);
        assert_eq!(due(&mut retry), Poll::Pending, "everything acknowledged: the round runs to its end");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(due(&mut retry), Poll::Ready(true));
        retry.watch(interval, false);
        assert!(retry.timer.is_none(), "and no other begins while nothing is in flight");
    }
}
