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

use plugin_api::abi;
use plugin_api::Hook;

use super::inbound::{acl_denied, Accepted, Acl};
use super::{Connection, Ended, Transport};
use crate::hooks::Route;
use crate::mqtt::subscribe::SubscriptionOptions;

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
    /// A PUBLISH that passed its checks: the ACL is still to be asked (`ask_acl`), then
    /// `message.publish` runs and the message is routed and acknowledged.
    Publish { accepted: Accepted, ask_acl: bool },
    /// A whole SUBSCRIBE (it may name several filters, each asked about in turn).
    Subscribe { packet_id: u16, id: Option<u32>, filters: Vec<(Box<str>, SubscriptionOptions)> },
}

impl<T: Transport> Connection<T> {
    /// Finishes a suspended packet, awaiting the chains that may block off the network
    /// threads.
    pub(super) async fn resume(&mut self, suspended: Box<Suspended>) -> Result<(), Ended> {
        match *suspended {
            Suspended::Publish { accepted, ask_acl } => {
                if ask_acl && self.acl_ask_blocking(abi::ACL_PUBLISH, accepted.message.topic()).await {
                    self.publish_denied(accepted);
                    return Ok(());
                }
                let ack = accepted.ack;
                let mut batch = self.publish_batch(&ack);
                let route = self.node.hooks.route(Hook::MessagePublish);
                let outcome = if route == Route::Later {
                    let (node, client) = (self.node.clone(), self.client.clone());
                    match node.publish_hooks_later(accepted.message, &client).await {
                        Ok(message) => {
                            let (can_wait, mut full) = (self.can_wait(), Vec::new());
                            let routed =
                                node.route_published(message, &client, can_wait.then_some(&mut full), Some(&mut batch));
                            if can_wait {
                                self.wait_for(full);
                            }
                            routed
                        }
                        Err(outcome) => outcome,
                    }
                } else if route == Route::Blocking {
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
