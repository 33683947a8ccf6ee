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
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use plugin_api::abi;
use plugin_api::Hook;

use super::acl_cache::AclCache;
use super::inbound::{acl_denied, Accepted, Acl, PublishAck};
use super::{Connection, Ended, Transport};
use crate::client::ClientInfo;
use crate::hooks::Route;
use crate::message::Message;
use crate::mqtt::subscribe::SubscriptionOptions;
use crate::node::Node;
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
        waiting.push_back(self.start_publish(first));
        let mut error = None;
        self.pipelining = true;
        loop {
            // Take the PUBLISHes read behind, unless one that is not pipelined waits.
            while error.is_none() && waiting.len() < depth && !matches!(waiting.back(), Some(Waiting::Unasked(_))) {
                match self.next_publish() {
                    Ok(Some(next)) => {
                        let next = self.start_publish(next);
                        waiting.push_back(next);
                    }
                    Ok(None) => break,
                    Err(ended) => error = Some(ended),
                }
            }
            match waiting.front() {
                None => break,
                Some(Waiting::Unasked(_)) => {
                    let Some(Waiting::Unasked(suspended)) = waiting.pop_front() else { unreachable!() };
                    self.pipelining = false;
                    let resumed = Box::pin(self.resume(suspended)).await;
                    self.pipelining = true;
                    if let Err(ended) = resumed {
                        error.get_or_insert(ended);
                    }
                }
                Some(Waiting::Asked { .. }) => {
                    let (node, client) = (self.node.clone(), self.client.clone());
                    let (cache, now) = (&mut self.acl_cache, self.now);
                    std::future::poll_fn(|cx| {
                        let mut in_order = true;
                        for entry in waiting.iter_mut() {
                            let Waiting::Asked { ack: _, progress } = entry else { break };
                            in_order &= progress.move_on(cx, in_order, &node, &client, cache, now);
                        }
                        match waiting.front() {
                            Some(Waiting::Asked { progress: Progress::Answered(_), .. }) => Poll::Ready(()),
                            _ => Poll::Pending,
                        }
                    })
                    .await;
                    let Some(Waiting::Asked { ack, progress: Progress::Answered(answered) }) = waiting.pop_front()
                    else {
                        unreachable!("the first was answered")
                    };
                    match answered {
                        Answered::Denied(message) => self.publish_denied(Accepted { message, ack }),
                        Answered::Hooked(hooked) => self.publish_hooked(ack, hooked),
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

    /// A pipelined PUBLISH, its ACL question started if it is to be asked; one that cannot be
    /// pipelined is left for [`Connection::resume`].
    fn start_publish(&mut self, suspended: Box<Suspended>) -> Waiting {
        if !self.pipelines(&suspended) {
            return Waiting::Unasked(suspended);
        }
        let Suspended::Publish { accepted: Accepted { message, ack }, acl } = *suspended else {
            unreachable!("only PUBLISHes are pipelined")
        };
        let progress = match acl {
            Acl::Allowed => Progress::Allowed(message),
            Acl::Denied => Progress::Answered(Answered::Denied(message)),
            Acl::Ask => {
                let generation = self.node.hooks.acl_generation();
                let (node, client, now_ms) = (self.node.clone(), self.client.clone(), self.now_ms);
                let topic = Box::<str>::from(message.topic());
                let check = Box::pin(async move { acl_denied(&node, &client, abi::ACL_PUBLISH, &topic, now_ms).await });
                Progress::Checking { message, generation, check }
            }
        };
        Waiting::Asked { ack, progress }
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

/// A PUBLISH of a pipeline ([`Connection::resume_publishes`]).
enum Waiting {
    /// Pipelined: where asking about it is.
    Asked { ack: PublishAck, progress: Progress },
    /// Not pipelined (the chain no longer answers later): finished by [`Connection::resume`]
    /// when its turn comes.
    Unasked(Box<Suspended>),
}

/// Where asking about a pipelined PUBLISH is: its ACL question (the answers may come in any
/// order), then `message.publish`'s chain, asked in the order the PUBLISHes came.
enum Progress {
    /// The ACL is being asked (its answer is cached at `generation`).
    Checking {
        message: Message,
        generation: u64,
        check: Pin<Box<dyn Future<Output = bool> + Send>>,
    },
    /// Allowed; `message.publish` is asked once it was asked about every PUBLISH ahead.
    Allowed(Message),
    Hooking(Pin<Box<dyn Future<Output = Result<Message, Published>> + Send>>),
    Answered(Answered),
}

/// How a pipelined PUBLISH was answered.
enum Answered {
    /// The ACL denied it.
    Denied(Message),
    /// What `message.publish`'s chain made of it.
    Hooked(Result<Message, Published>),
}

impl Progress {
    /// Moves it on as far as it goes now; `in_order`: `message.publish` was asked about every
    /// PUBLISH ahead. Returns whether it was asked about this one (or need not be).
    fn move_on(
        &mut self,
        cx: &mut std::task::Context<'_>,
        in_order: bool,
        node: &Arc<Node>,
        client: &Arc<ClientInfo>,
        cache: &mut Option<AclCache>,
        now: Instant,
    ) -> bool {
        if let Progress::Checking { message, generation, check } = self {
            let Poll::Ready(denied) = check.as_mut().poll(cx) else { return false };
            if let Some(cache) = cache {
                // An answer of an older generation (rules reloaded meanwhile) is dropped at
                // the next look-up.
                cache.put(*generation, abi::ACL_PUBLISH, message.topic(), denied, now);
            }
            let message = message.clone();
            *self = if denied { Progress::Answered(Answered::Denied(message)) } else { Progress::Allowed(message) };
        }
        if let Progress::Allowed(message) = self {
            if !in_order {
                return false;
            }
            let (node, client, message) = (node.clone(), client.clone(), message.clone());
            *self = Progress::Hooking(Box::pin(async move { node.publish_hooks_later(message, &client).await }));
        }
        if let Progress::Hooking(hooking) = self {
            if let Poll::Ready(hooked) = hooking.as_mut().poll(cx) {
                *self = Progress::Answered(Answered::Hooked(hooked));
            }
        }
        true
    }
}
