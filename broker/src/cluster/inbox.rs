//! What other nodes forward, read from the node's NATS subscriptions in the order each node
//! published it.
//!
//! The NATS client gives every subscription a channel of its own, so a message that reached
//! this node through one subscription can be read before an older one from the same node that
//! came through another. What makes the order recoverable: the client hands each message to its
//! subscription's channel as it reads it off the connection, in the order the server sent
//! them, and the server keeps each publisher's order. So once a message has been taken from
//! any channel, every older message of the same connection is already in its channel; one more
//! pass over the channels finds them. A round therefore takes what has arrived, passes over the
//! channels once more, and hands on, per origin node and in that node's numbering, everything
//! up to the newest message taken before that last pass; the rest waits for the next round.

use std::sync::Arc;
use std::task::Poll;

use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::QueueSubscription;

/// Where a message read from NATS came from: a plain subscription (`None`), or a share
/// group's queue subscription.
pub(super) type Via = Option<Arc<QueueSubscription>>;

/// A change of the subscriptions the inbox reads.
pub(super) enum Command {
    /// Reads `subscriber` (for `via`) from now on, as subscription `id`.
    Attach { id: u64, via: Via, subscriber: async_nats::Subscriber },
    /// Stops reading subscription `id` (dropping it unsubscribes it).
    Detach(u64),
    /// Messages read back from the other nodes' streams after NATS was lost (oldest first):
    /// handed on at once, as plain subscriptions' (routing recognises those seen before).
    Replay(Vec<async_nats::Message>),
}

/// One message from another node.
pub(super) struct Arrived {
    pub(super) via: Via,
    pub(super) message: async_nats::Message,
    /// Its node and its number there (0 and 0 if unreadable: handed on at once).
    origin: u64,
    seq: u64,
}

/// The first fields of every forwarded message's envelope (see `Envelope`).
#[derive(Deserialize)]
struct Head {
    _version: u8,
    origin: u64,
    seq: u64,
}

impl Arrived {
    fn new(via: Via, message: async_nats::Message) -> Arrived {
        let (origin, seq) = match postcard::take_from_bytes::<Head>(&message.payload) {
            Ok((head, _)) => (head.origin, head.seq),
            Err(_) => (0, 0),
        };
        Arrived { via, message, origin, seq }
    }
}

struct Reading {
    id: u64,
    via: Via,
    subscriber: async_nats::Subscriber,
}

/// The subscriptions being read.
#[derive(Default)]
pub(super) struct Inbox {
    reading: Vec<Reading>,
}

impl Inbox {
    /// Reads until `commands` closes, handing every message to `deliver` in order (see the
    /// module's doc).
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut deliver: impl FnMut(Arrived)) {
        loop {
            let first = tokio::select! {
                command = commands.recv() => {
                    match command {
                        Some(Command::Replay(messages)) => {
                            messages.into_iter().for_each(|m| deliver(Arrived::new(None, m)));
                        }
                        Some(command) => self.apply(command),
                        None => return,
                    }
                    continue;
                }
                first = std::future::poll_fn(|cx| self.poll_any(cx)) => first,
            };
            let mut taken = vec![first];
            loop {
                let mut after = Vec::new();
                self.drain(&mut after);
                let waiting = release(taken, after, &mut deliver);
                if waiting.is_empty() {
                    break;
                }
                taken = waiting;
            }
            // The task runs outside tokio's budget (see `spawn`): it lets others run here.
            tokio::task::yield_now().await;
        }
    }

    /// Runs the inbox on its own task. Outside tokio's cooperative budget: a channel polled
    /// past the budget says it is empty when it is not, and a pass that misses a message
    /// would hand on a newer one before it.
    pub(super) fn spawn(
        self,
        commands: mpsc::UnboundedReceiver<Command>,
        deliver: impl FnMut(Arrived) + Send + 'static,
    ) {
        tokio::spawn(tokio::task::unconstrained(self.run(commands, deliver)));
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Attach { id, via, subscriber } => self.reading.push(Reading { id, via, subscriber }),
            Command::Detach(id) => self.reading.retain(|r| r.id != id),
            Command::Replay(_) => {}
        }
    }

    /// The first message of any subscription, waiting for one.
    fn poll_any(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Arrived> {
        let mut ended = Vec::new();
        for reading in &mut self.reading {
            match reading.subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => return Poll::Ready(Arrived::new(reading.via.clone(), message)),
                // Unsubscribed, or the client is closing.
                Poll::Ready(None) => ended.push(reading.id),
                Poll::Pending => {}
            }
        }
        self.reading.retain(|r| !ended.contains(&r.id));
        Poll::Pending
    }

    /// Takes every message that has arrived, on every subscription, into `out`.
    fn drain(&mut self, out: &mut Vec<Arrived>) {
        for reading in &mut self.reading {
            // `None` (nothing yet) and `Some(None)` (ended; `poll_any` forgets it) both stop.
            while let Some(Some(message)) = reading.subscriber.next().now_or_never() {
                out.push(Arrived::new(reading.via.clone(), message));
            }
        }
    }
}

/// Hands on, per origin in its order, every message of `taken` and `after` up to the newest of
/// `taken` from that origin; returns the rest (newer messages taken in the last pass).
fn release(taken: Vec<Arrived>, after: Vec<Arrived>, deliver: &mut impl FnMut(Arrived)) -> Vec<Arrived> {
    let mut newest: Vec<(u64, u64)> = Vec::new();
    for arrived in &taken {
        match newest.iter_mut().find(|(origin, _)| *origin == arrived.origin) {
            Some((_, seq)) => *seq = (*seq).max(arrived.seq),
            None => newest.push((arrived.origin, arrived.seq)),
        }
    }
    let mut ready = taken;
    let mut waiting = Vec::new();
    for arrived in after {
        let due = newest.iter().any(|&(origin, seq)| origin == arrived.origin && arrived.seq <= seq);
        if due || arrived.origin == 0 {
            ready.push(arrived);
        } else {
            waiting.push(arrived);
        }
    }
    // Stable: copies of one message keep the order they came in.
    ready.sort_by_key(|a| (a.origin, a.seq));
    ready.into_iter().for_each(deliver);
    waiting
}
