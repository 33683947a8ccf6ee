//! Shared subscriptions: a group of subscribers of which one gets each message, picked by the
//! configured strategy (EMQX's `broker.shared_subscription_strategy`). Members whose client
//! is connected are preferred; a message goes to an offline member's queue only when no
//! member is connected.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Subscriber;

/// How a share group picks the member that gets a message (EMQX's
/// `broker.shared_subscription_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Any member, at random (EMQX's default).
    #[default]
    Random,
    /// Each member in turn.
    RoundRobin,
    /// The same member for as long as it stays subscribed and connected.
    Sticky,
    /// A member chosen by the publisher's client id: one publisher's messages stay in order
    /// at one member.
    Hash,
}

/// What a pick may depend on.
#[derive(Debug)]
pub(super) struct Pick<'a> {
    pub(super) publisher: &'a str,
    /// A session that may not be picked (the member a message is redispatched from); 0: none.
    pub(super) exclude: u64,
}

/// Which share group a delivery went to, so that it can be redispatched to another member
/// if its session ends before the client acknowledged it, or if the client refuses it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ShareGroup {
    /// The group's name (`$queue/` is the group `$queue`).
    pub(crate) name: Box<str>,
    /// The filter, without `$share/<group>/`.
    pub(crate) path: Box<str>,
}

/// One share group at one filter.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) name: Box<str>,
    /// The same, with the filter, shared by every delivery this group gets.
    pub(super) origin: Arc<ShareGroup>,
    pub(super) members: Vec<Subscriber>,
    next: AtomicUsize,
    /// The sticky member's session id (0: none yet).
    sticky: AtomicU64,
}

impl Group {
    pub(super) fn new(name: &str, path: &str) -> Group {
        Group {
            name: name.into(),
            origin: Arc::new(ShareGroup { name: name.into(), path: path.into() }),
            members: Vec::new(),
            next: AtomicUsize::new(0),
            sticky: AtomicU64::new(0),
        }
    }

    /// The member that gets the next message.
    pub(super) fn pick(&self, strategy: Strategy, pick: &Pick<'_>) -> Option<&Subscriber> {
        let eligible = |m: &&Subscriber| m.session.id != pick.exclude;
        let connected = self.members.iter().filter(eligible).filter(|m| m.session.is_connected()).count();
        let candidates = |i: usize| -> Option<&Subscriber> {
            if connected == 0 {
                self.members.iter().filter(eligible).nth(i)
            } else {
                self.members.iter().filter(eligible).filter(|m| m.session.is_connected()).nth(i)
            }
        };
        let count = if connected == 0 { self.members.iter().filter(eligible).count() } else { connected };
        if count == 0 {
            return None;
        }
        let index = match strategy {
            Strategy::Random => fastrand::usize(..count),
            Strategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % count,
            Strategy::Hash => {
                // DefaultHasher::new has fixed keys: one publisher maps to one member.
                let mut h = std::collections::hash_map::DefaultHasher::new();
                pick.publisher.hash(&mut h);
                (h.finish() % count as u64) as usize
            }
            Strategy::Sticky => {
                let sticky = self.sticky.load(Ordering::Relaxed);
                if let Some(member) = self
                    .members
                    .iter()
                    .filter(eligible)
                    .find(|m| m.session.id == sticky && (connected == 0 || m.session.is_connected()))
                {
                    return Some(member);
                }
                let chosen = candidates(fastrand::usize(..count))?;
                self.sticky.store(chosen.session.id, Ordering::Relaxed);
                return Some(chosen);
            }
        };
        candidates(index)
    }
}
