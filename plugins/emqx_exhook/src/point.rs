//! EMQX's hook points, as a HookProvider names them, and which of them this broker's hooks
//! are. A server asks for points by name in its `LoadedResponse`; v1 (EMQX 4.3) and v2
//! (EMQX 5) spell two of them differently.

use plugin_api::Hook;

use crate::settings::Proto;

/// One of the hook points a HookProvider may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Point {
    ClientConnect,
    ClientConnack,
    ClientConnected,
    ClientDisconnected,
    ClientAuthenticate,
    /// v2 `client.authorize`, v1 `client.check_acl`.
    ClientAuthorize,
    ClientSubscribe,
    ClientUnsubscribe,
    SessionCreated,
    SessionSubscribed,
    SessionUnsubscribed,
    SessionResumed,
    SessionDiscarded,
    /// v2 `session.takenover`, v1 `session.takeovered`.
    SessionTakenover,
    SessionTerminated,
    MessagePublish,
    MessageDelivered,
    MessageAcked,
    MessageDropped,
}

impl Point {
    pub(crate) const ALL: [Point; 19] = [
        Point::ClientConnect,
        Point::ClientConnack,
        Point::ClientConnected,
        Point::ClientDisconnected,
        Point::ClientAuthenticate,
        Point::ClientAuthorize,
        Point::ClientSubscribe,
        Point::ClientUnsubscribe,
        Point::SessionCreated,
        Point::SessionSubscribed,
        Point::SessionUnsubscribed,
        Point::SessionResumed,
        Point::SessionDiscarded,
        Point::SessionTakenover,
        Point::SessionTerminated,
        Point::MessagePublish,
        Point::MessageDelivered,
        Point::MessageAcked,
        Point::MessageDropped,
    ];

    /// The name a server of `proto` uses.
    pub(crate) const fn name(self, proto: Proto) -> &'static str {
        match (self, proto) {
            (Point::ClientConnect, _) => "client.connect",
            (Point::ClientConnack, _) => "client.connack",
            (Point::ClientConnected, _) => "client.connected",
            (Point::ClientDisconnected, _) => "client.disconnected",
            (Point::ClientAuthenticate, _) => "client.authenticate",
            (Point::ClientAuthorize, Proto::V1) => "client.check_acl",
            (Point::ClientAuthorize, Proto::V2) => "client.authorize",
            (Point::ClientSubscribe, _) => "client.subscribe",
            (Point::ClientUnsubscribe, _) => "client.unsubscribe",
            (Point::SessionCreated, _) => "session.created",
            (Point::SessionSubscribed, _) => "session.subscribed",
            (Point::SessionUnsubscribed, _) => "session.unsubscribed",
            (Point::SessionResumed, _) => "session.resumed",
            (Point::SessionDiscarded, _) => "session.discarded",
            (Point::SessionTakenover, Proto::V1) => "session.takeovered",
            (Point::SessionTakenover, Proto::V2) => "session.takenover",
            (Point::SessionTerminated, _) => "session.terminated",
            (Point::MessagePublish, _) => "message.publish",
            (Point::MessageDelivered, _) => "message.delivered",
            (Point::MessageAcked, _) => "message.acked",
            (Point::MessageDropped, _) => "message.dropped",
        }
    }

    /// The point a server of `proto` calls `name`, if it is one of that version's.
    pub(crate) fn from_name(name: &str, proto: Proto) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.name(proto) == name)
    }

    /// The point this broker's `hook` is, by its EMQX 4 name (so a hook the broker adds
    /// later under one of EMQX's names, `session.created` say, is sent without more work).
    pub(crate) fn of_hook(hook: Hook) -> Option<Point> {
        Point::from_name(hook.name(), Proto::V1).or_else(|| Point::from_name(hook.name(), Proto::V2))
    }

    /// A message hook: its spec may have topic filters, and `$SYS/` messages skip it (EMQX).
    pub(crate) const fn is_message(self) -> bool {
        matches!(self, Point::MessagePublish | Point::MessageDelivered | Point::MessageAcked | Point::MessageDropped)
    }

    /// A point whose answer decides something (asked and waited for); the others are
    /// notifications, sent from a queue.
    pub(crate) const fn decides(self) -> bool {
        matches!(self, Point::ClientAuthenticate | Point::ClientAuthorize | Point::MessagePublish)
    }

    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// What a server asked for in its `LoadedResponse`: the points, and for message points their
/// topic filters (none: every topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HookSpec {
    points: u32,
    /// `(point, filters)` of the message points asked for with filters.
    topics: Vec<(Point, Vec<String>)>,
}

impl HookSpec {
    /// From the `(name, topics)` pairs a server of `proto` answered; names this broker does
    /// not know for that version are returned apart (they are logged, not fatal).
    pub(crate) fn resolve(hooks: Vec<(String, Vec<String>)>, proto: Proto) -> (HookSpec, Vec<String>) {
        let mut spec = HookSpec::default();
        let mut unknown = Vec::new();
        for (name, topics) in hooks {
            let Some(point) = Point::from_name(&name, proto) else {
                unknown.push(name);
                continue;
            };
            spec.points |= point.bit();
            spec.topics.retain(|(p, _)| *p != point);
            if point.is_message() && !topics.is_empty() {
                spec.topics.push((point, topics));
            }
        }
        (spec, unknown)
    }

    /// Whether the server wants `point`, for a message on `topic` when it is a message point.
    pub(crate) fn wants(&self, point: Point, topic: Option<&str>) -> bool {
        if self.points & point.bit() == 0 {
            return false;
        }
        match (self.topics.iter().find(|(p, _)| *p == point), topic) {
            (Some((_, filters)), Some(topic)) => filters.iter().any(|f| plugin_api::topic::matches(f, topic)),
            _ => true,
        }
    }

    /// The points asked for, in [`Point::ALL`] order.
    pub(crate) fn points(&self) -> impl Iterator<Item = Point> + '_ {
        Point::ALL.into_iter().filter(|p| self.points & p.bit() != 0)
    }

    /// A message point's topic filters (empty: every topic).
    pub(crate) fn topics(&self, point: Point) -> &[String] {
        self.topics.iter().find(|(p, _)| *p == point).map_or(&[], |(_, t)| t.as_slice())
    }

    /// As EMQX 4.3's `exhook server list` prints it (Erlang's `~0p` of the map):
    /// `#{'client.connect' => #{},'message.publish' => #{topics => [<<"t/#">>]}}`.
    pub(crate) fn erlang(&self, proto: Proto) -> String {
        let mut entries: Vec<(&str, String)> = self
            .points()
            .map(|p| {
                let value = if p.is_message() {
                    let topics: Vec<String> = self.topics(p).iter().map(|t| format!("<<\"{t}\">>")).collect();
                    format!("#{{topics => [{}]}}", topics.join(","))
                } else {
                    "#{}".to_owned()
                };
                (p.name(proto), value)
            })
            .collect();
        // Erlang prints a small map's atom keys in order.
        entries.sort();
        let entries: Vec<String> = entries.into_iter().map(|(name, value)| format!("'{name}' => {value}")).collect();
        format!("#{{{}}}", entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_version() {
        assert_eq!(Point::from_name("client.check_acl", Proto::V1), Some(Point::ClientAuthorize));
        assert_eq!(Point::from_name("client.check_acl", Proto::V2), None);
        assert_eq!(Point::from_name("client.authorize", Proto::V2), Some(Point::ClientAuthorize));
        assert_eq!(Point::from_name("session.takeovered", Proto::V1), Some(Point::SessionTakenover));
        assert_eq!(Point::of_hook(Hook::ClientCheckAcl), Some(Point::ClientAuthorize));
        assert_eq!(Point::of_hook(Hook::MessageDropped), Some(Point::MessageDropped));
        // Every hook of this broker is one of EMQX's points.
        for hook in Hook::ALL {
            assert!(Point::of_hook(hook).is_some(), "{}", hook.name());
        }
    }

    #[test]
    fn a_spec_filters_message_points_by_topic() {
        let (spec, unknown) = HookSpec::resolve(
            vec![
                ("client.connected".into(), vec!["ignored/#".into()]),
                ("message.publish".into(), vec!["a/+".into(), "b/#".into()]),
                ("message.delivered".into(), vec![]),
                ("client.frobnicate".into(), vec![]),
            ],
            Proto::V2,
        );
        assert_eq!(unknown, vec!["client.frobnicate".to_owned()]);
        assert!(spec.wants(Point::ClientConnected, None));
        assert!(!spec.wants(Point::ClientConnect, None));
        assert!(spec.wants(Point::MessagePublish, Some("a/1")) && spec.wants(Point::MessagePublish, Some("b/1/2")));
        assert!(!spec.wants(Point::MessagePublish, Some("c")));
        assert!(spec.wants(Point::MessageDelivered, Some("anything")));
        assert_eq!(
            spec.erlang(Proto::V2),
            "#{'client.connected' => #{},'message.delivered' => #{topics => []},\
             'message.publish' => #{topics => [<<\"a/+\">>,<<\"b/#\">>]}}"
        );
    }
}
