//! EMQX 4.3's per-connection input limits (`mqtt.rate_limit.conn_messages_in` and
//! `conn_bytes_in`): a client that publishes faster than its limit is not refused or
//! disconnected; the broker stops taking its input until the limit allows more, as EMQX pauses
//! the socket. Its PUBLISH packets beyond the limit wait, unread or unhandled, with whatever
//! it sent after them; TCP's flow control then holds the client back.
//!
//! Each limit is a token bucket holding at most one period's worth (the burst EMQX allows):
//! messages are taken whole before a PUBLISH is handled (one without a token waits in the read
//! buffer); bytes are taken as they are read, so a read may overdraw the bucket, and nothing
//! more is read until it is paid back.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// A limit: `amount` (messages or bytes) per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) amount: u64,
    pub(crate) period: Duration,
}

/// A connection's limits and where it stands against them.
#[derive(Debug)]
pub(crate) struct Limiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// While the client must wait: until when.
    pause: Option<Pin<Box<Sleep>>>,
}

/// What the limits say when the connection is about to read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// Nothing holds the client back.
    None,
    /// A pause just ended: what waits in the buffer may be handled now.
    Ended,
    /// The client waits (the task is woken when the pause ends).
    Waiting,
}

impl Limiter {
    /// A limiter for `messages` and `bytes` a period; `None` when neither is set.
    pub(crate) fn new(messages: Option<Rate>, bytes: Option<Rate>) -> Option<Box<Limiter>> {
        if messages.is_none() && bytes.is_none() {
            return None;
        }
        let now = Instant::now();
        Some(Box::new(Limiter {
            messages: messages.map(|r| Bucket::full(r, now)),
            bytes: bytes.map(|r| Bucket::full(r, now)),
            pause: None,
        }))
    }

    /// Takes a message's token; false (and the client waits) if there is none yet.
    pub(crate) fn admit_message(&mut self, now: Instant) -> bool {
        let Some(bucket) = &mut self.messages else { return true };
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        let wait = bucket.time_to(1.0);
        self.pause_for(wait);
        false
    }

    /// Takes `n` bytes just read; past the limit, reading waits until they are paid back.
    pub(crate) fn took_bytes(&mut self, n: usize) {
        let Some(bucket) = &mut self.bytes else { return };
        bucket.refill(Instant::now());
        bucket.tokens -= n as f64;
        if bucket.tokens < 0.0 {
            let wait = bucket.time_to(0.0);
            self.pause_for(wait);
        }
    }

    /// Whether the client waits now; registers the task to be woken when the pause ends.
    pub(crate) fn poll_pause(&mut self, cx: &mut Context<'_>) -> Pause {
        let Some(pause) = &mut self.pause else { return Pause::None };
        if pause.as_mut().poll(cx).is_pending() {
            return Pause::Waiting;
        }
        self.pause = None;
        Pause::Ended
    }

    /// Whether the client is held back now (its keep-alive does not run against it).
    pub(crate) fn is_paused(&self) -> bool {
        self.pause.as_ref().is_some_and(|p| !p.is_elapsed())
    }

    fn pause_for(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        match &mut self.pause {
            Some(pause) if pause.deadline() >= until => {}
            Some(pause) => pause.as_mut().reset(until),
            None => self.pause = Some(Box::pin(tokio::time::sleep_until(until))),
        }
    }
}

/// Tokens that come back at `per_second`, at most `capacity`.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        let capacity = rate.amount as f64;
        let per_second = capacity / rate.period.as_secs_f64().max(0.001);
        Bucket { per_second, capacity, tokens: capacity, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// How long until the bucket holds `level` tokens.
    fn time_to(&self, level: f64) -> Duration {
        let missing = (level - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.per_second).max(Duration::from_millis(1))
    }
}

/// Reads a limit as EMQX writes it: `"100,10s"` (messages), `"100KB,10s"` (bytes, `KB`, `MB`
/// and `GB` counting 1024s, as EMQX does; the period as every duration setting is written); an
/// empty text is no limit.
pub(crate) fn parse(text: &str, bytes: bool) -> Result<Option<Rate>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (amount, period_text) = text.split_once(',').ok_or_else(|| format!("{text:?} is not AMOUNT,PERIOD"))?;
    let amount = amount.trim();
    let (digits, unit) = amount.split_at(amount.find(|c: char| !c.is_ascii_digit()).unwrap_or(amount.len()));
    let scale: u64 = match (bytes, unit.trim().to_ascii_uppercase().as_str()) {
        (_, "") => 1,
        (true, "KB") => 1 << 10,
        (true, "MB") => 1 << 20,
        (true, "GB") => 1 << 30,
        _ => return Err(format!("{amount:?} is not a {}", if bytes { "size (100, 100KB, 1MB)" } else { "count" })),
    };
    let amount = digits.parse::<u64>().map_err(|_| format!("{amount:?} is not a number"))?.saturating_mul(scale);
    let period = crate::config::duration_of(period_text.trim())?;
    if amount == 0 || period.is_zero() {
        return Err(format!("{text:?}: both the amount and the period must be above 0"));
    }
    Ok(Some(Rate { amount, period }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_as_emqx_writes_them() {
        let rate = |amount, secs| Ok(Some(Rate { amount, period: Duration::from_secs(secs) }));
        assert_eq!(parse("100,10s", false), rate(100, 10));
        assert_eq!(parse(" 100KB, 10s ", true), rate(100 * 1024, 10));
        assert_eq!(parse("1MB,1m", true), rate(1 << 20, 60));
        assert_eq!(parse("5,2", false), rate(5, 2));
        assert_eq!(parse("", false), Ok(None));
        for bad in ["100", "100KB,10s", "0,1s", "1,0s", "x,1s", "1,forever"] {
            assert!(parse(bad, false).is_err(), "{bad}");
        }
        assert!(parse("1TB,1s", true).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn messages_past_the_burst_wait_for_their_tokens() {
        let rate = Rate { amount: 2, period: Duration::from_secs(10) };
        let mut limiter = Limiter::new(Some(rate), None).unwrap();
        let start = Instant::now();
        assert!(limiter.admit_message(start) && limiter.admit_message(start), "the burst");
        assert!(!limiter.admit_message(start));
        assert!(limiter.is_paused());
        // One token comes back every 5 s.
        assert!(!limiter.admit_message(start + Duration::from_secs(4)));
        assert!(limiter.admit_message(start + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_overdrawn_by_a_read_are_paid_back_before_the_next() {
        let rate = Rate { amount: 1000, period: Duration::from_secs(1) };
        let mut limiter = Limiter::new(None, Some(rate)).unwrap();
        limiter.took_bytes(600);
        assert!(!limiter.is_paused());
        limiter.took_bytes(900);
        assert!(limiter.is_paused(), "500 bytes owed: half a second");
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(limiter.poll_pause(&mut cx), Pause::Waiting);
        tokio::time::advance(Duration::from_millis(501)).await;
        assert_eq!(limiter.poll_pause(&mut cx), Pause::Ended);
        assert_eq!(limiter.poll_pause(&mut cx), Pause::None);
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
