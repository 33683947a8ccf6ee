//! Answering a hook later: [`Later`], the safe side of [`abi::HOOK_LATER`].

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::abi::{self, AnswerFn, RawAnswer, RawBytes, RawStr};
use crate::event::{HookResult, QoS};
use crate::info::Hook;

/// A promise to answer one hook event later, from any thread: what
/// [`crate::Plugin::on_event_later`] gets for a hook in [`crate::Plugin::LATER_HOOKS`].
///
/// Answer it once with [`Later::answer`] or [`Later::replace`]. Dropping it unanswered
/// answers [`HookResult::Continue`] (no opinion), and dropping it while the thread panics
/// reports the panic to the host (which stops the plugin), so a client never waits for an
/// answer that cannot come. Until it is answered, the client the event is about waits (its
/// later packets wait behind it); nothing else does. The host waits at most its
/// `broker.hook_answer_timeout` (default 60 s): then the chain refuses (deny; a message is
/// dropped), and a later answer is ignored.
#[derive(Debug)]
pub struct Later {
    ticket: NonNull<c_void>,
    answer: AnswerFn,
    hook: Hook,
}

// SAFETY: the host's ticket may be answered from any thread (the ABI says so), and a `Later`
// is the only handle to it.
unsafe impl Send for Later {}

/// What a later answer to `message.publish` (or `client.subscribe` / `client.unsubscribe`)
/// replaces; `None` fields stay as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replacement<'a> {
    /// The new topic (or filter).
    pub topic: Option<&'a str>,
    /// `message.publish`: the new payload.
    pub payload: Option<&'a [u8]>,
    /// `message.publish`: the new QoS.
    pub qos: Option<QoS>,
}

impl Later {
    /// The host's ticket and answer function, as the event carried them.
    pub(crate) fn new(ticket: *mut c_void, answer: AnswerFn, hook: Hook) -> Option<Later> {
        Some(Later { ticket: NonNull::new(ticket)?, answer, hook })
    }

    /// The hook of the event to be answered.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Answers `result` ([`HookResult::Replace`] replaces nothing here: use
    /// [`Later::replace`]).
    pub fn answer(self, result: HookResult) {
        self.send(result.to_raw(), Replacement::default());
    }

    /// Answers [`HookResult::Replace`] with what `replacement` names. A replacement with
    /// nothing in it answers [`HookResult::Continue`].
    pub fn replace(self, replacement: Replacement<'_>) {
        let empty = replacement.topic.is_none() && replacement.payload.is_none() && replacement.qos.is_none();
        let result = if empty { abi::HOOK_CONTINUE } else { abi::HOOK_REPLACE };
        self.send(result, replacement);
    }

    fn send(self, result: u32, replacement: Replacement<'_>) {
        let answer = RawAnswer {
            size: std::mem::size_of::<RawAnswer>() as u32,
            result,
            topic: replacement.topic.map_or(RawStr::EMPTY, RawStr::new),
            payload: replacement.payload.map_or(RawBytes::EMPTY, RawBytes::new),
            replace_payload: u8::from(replacement.payload.is_some()),
            qos: replacement.qos.map_or(abi::ANSWER_QOS_UNCHANGED, |q| q as u8),
        };
        let (ticket, answer_fn) = (self.ticket, self.answer);
        std::mem::forget(self);
        // SAFETY: the ticket came with this answer function in one event, and forgetting
        // `self` makes this its only use; the answer is valid during the call.
        unsafe { answer_fn(ticket.as_ptr(), &answer) };
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        let result = if std::thread::panicking() { abi::HOOK_PANICKED } else { abi::HOOK_CONTINUE };
        let answer = RawAnswer {
            size: std::mem::size_of::<RawAnswer>() as u32,
            result,
            topic: RawStr::EMPTY,
            payload: RawBytes::EMPTY,
            replace_payload: 0,
            qos: abi::ANSWER_QOS_UNCHANGED,
        };
        // SAFETY: a `Later` that was not answered still owns its ticket; this is its only use.
        unsafe { (self.answer)(self.ticket.as_ptr(), &answer) };
    }
}
