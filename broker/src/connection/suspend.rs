//! Packets that wait for a hook chain that may block (a plugin declared the hook in its
//! `blocking_hooks`: `client.check_acl` asking an HTTP service, `message.publish` writing to
//! disk).
//!
//! Handling a packet is synchronous (`inbound`). When a packet needs such a chain, its
//! handler stops before asking it and hands back what is left to do as a [`Suspended`]; the
//! connection then runs [`Connection::resume`], which runs the chain on the blocking pool
//! ([`crate::hooks::Hooks::run_blocking`]) and awaits it, or, for a chain whose plugins
//! answer later ([`Route::Later`]), runs it on this task and awaits their answers
//! ([`crate::hooks::Hooks::dispatch_later`]); either way the network thread goes on serving
//! every other client. This client's later packets stay unread in its buffer (and
//! its socket) until the packet is finished, and are then handled in order. The connection
//! does nothing else meanwhile (as an EMQX channel process blocked in a hook): its
//! deliveries wait in its session queue.
//!
//! With no blocking plugin none of this runs: the handlers answer inline and allocate nothing
//! more than before. The suspended state and the future that resumes it are boxed, so they
//! cost a connection nothing while it does not wait.
//!
//! PUBLISHes whose `message.publish` chain is answered later are pipelined
//! ([`Connection::resume_publishes`]): while the first waits, the QoS 0 and 1 PUBLISHes
//! already read behind it are asked about too (the ACL when it is not cached, then
//! `message.publish`), up to `broker.hook_pipeline` of them at once, in the order they came;
//! each is then routed and acknowledged in that order, once its answer and those of the
//! PUBLISHes ahead of it are in. A plugin is thus asked about a client's messages in order, but
//! about more than one at a time (an EMQX channel asks about one at a time: `hook_pipeline =
//! 1`). Any other packet, and a QoS 2 PUBLISH, waits until those ahead of it are finished.
//! Overload protection may let up to that many more messages into queues that are full: those
//! behind the one that filled them were already asked about.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use plugin_api::abi;
use plugin_api::Hook;

use super::inbound::{acl_denied, Accepted, Acl, PublishAck};
use super::{Connection, Ended, Transport};
use crate::hooks::Route;
use crate::message::Message;
use crate::mqtt::subscribe::SubscriptionOptions;
use crate::node::Published;

/// What handling a packet left to do.
pub(super) enum Next {
    /// Nothing: the packet was handled.
    Done,
    /// The rest waits for a hook chain that may block: [`Connection::resume`] finishes it.
    Wait(Box<Suspended>),
}

/// A packet whose handling waits for a hook chain that may block.
#[derive(Debug)]
pub(super) enum Suspended {
    /// A PUBLISH that passed its checks, and what the ACL said (`Ask`: still to be asked);
    /// then `message.publish` runs and the message is routed and acknowledged.
    Publish { accepted: Accepted, acl: Acl },
    /// A whole SUBSCRIBE (it may name several filters, each asked about in turn).
    Subscribe { packet_id: u16, id: Option<u32>, filters: Vec<(Box<str>, SubscriptionOptions)> },
}

impl<T: Transport> Connection<T> {
    /// Finishes a suspended packet, awaiting the chains that may block off the network
    /// threads.
    pub(super) async fn resume(&mut self, suspended: Box<Suspended>) -> Result<(), Ended> {
        match *suspended {
            Suspended::Publish { accepted, acl } => {
                let denied = match acl {
                    Acl::Allowed => false,
                    Acl::Denied => true,
                    Acl::Ask => self.acl_ask_blocking(abi::ACL_PUBLISH, accepted.message.topic()).await,
                };
                if denied {
                    self.publish_denied(accepted);
                    return Ok(());
                }
                let ack = accepted.ack;
                let route = self.node.hooks.route(Hook::MessagePublish);
                if route == Route::Later {
                    let (node, client) = (self.node.clone(), self.client.clone());
                    let hooked = node.publish_hooks_later(accepted.message, &client).await;
                    self.publish_hooked(ack, hooked);
                    return Ok(());
                }
                let mut batch = self.publish_batch(&ack);
                let outcome = if route == Route::Blocking {
                    let (node, client, message) = (self.node.clone(), self.client.clone(), accepted.message);
                    let can_wait = self.can_wait();
                    let publish = move || {
                        let mut full = Vec::new();
                        let outcome =
                            node.publish_from(message, &client, can_wait.then_some(&mut full), Some(&mut batch));
                        (outcome, full, batch)
                    };
                    // `None` only when the runtime shuts down: the message is not acknowledged.
                    let (outcome, full, routed) =
                        self.node.hooks.run_blocking(Hook::MessagePublish, publish).await.ok_or(Ended::Shutdown)?;
                    batch = routed;
                    if can_wait {
                        self.wait_for(full);
                    }
                    outcome
                } else {
                    self.publish_message(accepted.message, &mut batch)
                };
                self.publish_acked(ack, outcome, batch);
            }
            Suspended::Subscribe { packet_id, id, filters } => {
                if let Some(caught_up) = self.node.cluster.as_ref().and_then(|c| c.shared_state_caught_up()) {
                    caught_up.await;
                }
                let mut codes = Vec::with_capacity(filters.len());
                let mut granted = Vec::with_capacity(filters.len());
                for (filter, options) in &filters {
                    let code = match self.subscribe_filter(filter, *options)? {
                        Err(code) => code,
                        Ok(filter) => {
                            let denied = match self.acl_check(abi::ACL_SUBSCRIBE, &filter) {
                                Acl::Ask => self.acl_ask_blocking(abi::ACL_SUBSCRIBE, &filter).await,
                                acl => acl == Acl::Denied,
                            };
                            self.grant(&filter, *options, id, denied, &mut granted)
                        }
                    };
                    codes.push(code);
                }
                // In a cluster the SUBACK's waits are over before it is queued, so that the
                // retained messages `session.subscribed` delivers follow it.
                if let Some(in_cluster) = self.in_cluster(&granted) {
                    let _ = in_cluster.await;
                }
                self.send_suback(packet_id, &codes, granted, true);
            }
        }
        Ok(())
    }

    /// Finishes `first`, a PUBLISH waiting for a `message.publish` chain answered later (see
    /// [`Connection::pipelines`]), and the PUBLISHes read behind it, pipelined (see the
    /// module's doc). A protocol error in one of those ends the connection once the PUBLISHes
    /// ahead of it are finished.
    pub(super) async fn resume_publishes(&mut self, first: Box<Suspended>) -> Result<(), Ended> {
        let depth = self.node.hooks.publish_pipeline();
        let mut waiting: VecDeque<Waiting> = VecDeque::with_capacity(depth);
        waiting.push_back(self.start_publish(first).await);
        let mut error = None;
        self.pipelining = true;
        while let Some(head) = waiting.pop_front() {
            // Ask about the PUBLISHes read behind it, unless one that is not asked yet waits.
            while error.is_none() && waiting.len() + 1 < depth && !matches!(waiting.back(), Some(Waiting::Unasked(_))) {
                match self.next_publish() {
                    Ok(Some(next)) => {
                        let next = self.start_publish(next).await;
                        waiting.push_back(next);
                    }
                    Ok(None) => break,
                    Err(ended) => error = Some(ended),
                }
            }
            match head {
                Waiting::Asked { ack, acl_generation, answer } => {
                    let answered = answer.await;
                    self.publish_answered(ack, acl_generation, answered);
                }
                Waiting::Unasked(suspended) => {
                    self.pipelining = false;
                    let resumed = Box::pin(self.resume(suspended)).await;
                    self.pipelining = true;
                    if let Err(ended) = resumed {
                        error.get_or_insert(ended);
                    }
                }
            }
        }
        self.pipelining = false;
        error.map_or(Ok(()), Err)
    }

    /// Whether `suspended` can be pipelined: a QoS 0 or 1 PUBLISH whose `message.publish`
    /// chain is answered later.
    pub(super) fn pipelines(&self, suspended: &Suspended) -> bool {
        matches!(suspended, Suspended::Publish { accepted, .. } if accepted.ack.qos() < 2)
            && self.node.hooks.route(Hook::MessagePublish) == Route::Later
    }

    /// The next PUBLISH in the read buffer (`pipelining` stops `handle_frames` before any
    /// other packet, and makes it hand back every PUBLISH); none while overload protection
    /// holds the client (its PUBLISHes are parked, and handled after these).
    fn next_publish(&mut self) -> Result<Option<Box<Suspended>>, Ended> {
        if self.congestion.is_some() || self.inbound.is_empty() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.inbound);
        let result = self.handle_frames(&mut buf, false);
        self.inbound = buf;
        result
    }

    /// Asks about a pipelined PUBLISH now (the ACL if it is to be asked, then
    /// `message.publish`'s chain), so that the plugins are asked in the order the PUBLISHes
    /// came; one that cannot be pipelined is left for [`Connection::resume`].
    async fn start_publish(&mut self, suspended: Box<Suspended>) -> Waiting {
        if !self.pipelines(&suspended) {
            return Waiting::Unasked(suspended);
        }
        let Suspended::Publish { accepted: Accepted { message, ack }, acl } = *suspended else {
            unreachable!("only PUBLISHes are pipelined")
        };
        let acl_generation = (acl == Acl::Ask).then(|| self.node.hooks.acl_generation());
        let (node, client, now_ms) = (self.node.clone(), self.client.clone(), self.now_ms);
        let mut answer: Answering = Box::pin(async move {
            let denied = match acl {
                Acl::Allowed => false,
                Acl::Denied => true,
                Acl::Ask => acl_denied(&node, &client, abi::ACL_PUBLISH, message.topic(), now_ms).await,
            };
            if denied {
                return Answered::Denied(message);
            }
            let topic = acl_generation.map(|_| Box::<str>::from(message.topic()));
            Answered::Hooked { allowed_topic: topic, hooked: node.publish_hooks_later(message, &client).await }
        });
        // Polled once here: that asks the plugins (an answer already given is kept).
        let mut answered = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = answer.as_mut().poll(cx) {
                answered = Some(done);
            }
            Poll::Ready(())
        })
        .await;
        if let Some(done) = answered {
            answer = Box::pin(std::future::ready(done));
        }
        Waiting::Asked { ack, acl_generation, answer }
    }

    /// Finishes a pipelined PUBLISH once it was answered: the ACL's answer cached (when it
    /// was asked), then the message dropped as denied, or routed and acknowledged.
    fn publish_answered(&mut self, ack: PublishAck, acl_generation: Option<u64>, answered: Answered) {
        match answered {
            Answered::Denied(message) => {
                if let (Some(generation), Some(cache)) = (acl_generation, &mut self.acl_cache) {
                    cache.put(generation, abi::ACL_PUBLISH, message.topic(), true, self.now);
                }
                self.publish_denied(Accepted { message, ack });
            }
            Answered::Hooked { allowed_topic, hooked } => {
                if let (Some(generation), Some(topic), Some(cache)) =
                    (acl_generation, allowed_topic, &mut self.acl_cache)
                {
                    cache.put(generation, abi::ACL_PUBLISH, &topic, false, self.now);
                }
                self.publish_hooked(ack, hooked);
            }
        }
    }

    /// Routes and acknowledges a PUBLISH once `message.publish`'s chain answered.
    fn publish_hooked(&mut self, ack: PublishAck, hooked: Result<Message, Published>) {
        let mut batch = self.publish_batch(&ack);
        let outcome = match hooked {
            Ok(message) => {
                let (node, client) = (self.node.clone(), self.client.clone());
                let (can_wait, mut full) = (self.can_wait(), Vec::new());
                let routed = node.route_published(message, &client, can_wait.then_some(&mut full), Some(&mut batch));
                if can_wait {
                    self.wait_for(full);
                }
                routed
            }
            Err(outcome) => outcome,
        };
        self.publish_acked(ack, outcome, batch);
    }

    /// Asks the `client.check_acl` chain, which may block or answer later, whether `action`
    /// on `topic` is denied, and caches the answer as [`Connection::acl_check`] does.
    async fn acl_ask_blocking(&mut self, action: u32, topic: &str) -> bool {
        let generation = self.node.hooks.acl_generation();
        let denied = acl_denied(&self.node, &self.client, action, topic, self.now_ms).await;
        if let Some(cache) = &mut self.acl_cache {
            // An answer of an older generation (rules reloaded meanwhile) is dropped at the
            // next look-up.
            cache.put(generation, action, topic, denied, self.now);
        }
        denied
    }
}

/// How a pipelined PUBLISH was answered.
enum Answered {
    /// The ACL denied it.
    Denied(Message),
    /// `message.publish`'s chain answered (`allowed_topic`: the ACL was asked, and allowed it).
    Hooked { allowed_topic: Option<Box<str>>, hooked: Result<Message, Published> },
}

/// A pipelined PUBLISH's answer to come.
type Answering = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// A PUBLISH of a pipeline ([`Connection::resume_publishes`]).
enum Waiting {
    /// It was asked about (`acl_generation`: the ACL too, at that generation of its cache).
    Asked { ack: PublishAck, acl_generation: Option<u64>, answer: Answering },
    /// Not pipelined (a QoS 2 PUBLISH, or the chain no longer answers later): finished by
    /// [`Connection::resume`] when its turn comes.
    Unasked(Box<Suspended>),
}
