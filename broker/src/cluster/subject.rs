//! MQTT topics and filters as NATS subjects, reversibly.
//!
//! A NATS subject is tokens separated by `.`; a token may not be empty nor hold `.`, `*`, `>`
//! or white space, and `*` (one token) and `>` (one or more, last) are its wildcards. An MQTT
//! topic is levels separated by `/`, any of which may be empty or hold any character but
//! `+` and `#`. So each level is written as a token of its own:
//!
//! - bytes `A-Z a-z 0-9 _ -` stay as they are; every other byte (`.`, `*`, `>`, space, `$`,
//!   `%`, UTF-8 beyond ASCII...) is written `%XX` (upper-case hex);
//! - an empty level (`a//b`, a leading or trailing `/`) is the token `%`, which no escaped level
//!   can be (an escape is always `%` and two hex digits).
//!
//! Subjects live under a root (`[cluster] subject_prefix`, `mqtt` by default) and a class
//! token: `t` for ordinary topics and `s` for those starting with `$`. MQTT says `#` and a
//! leading `+` never match a `$` topic (MQTT-4.7.2-1); with the two classes a NATS wildcard
//! never does either, so a node receives no `$SYS` traffic it did not ask for.
//!
//! A filter becomes one or two subject filters: `+` is `*`, and `#` is `>` plus the parent
//! level itself (MQTT's `a/#` matches `a`; NATS's `a.>` does not).
//!
//! QoS 1 and 2 messages travel under a root of their publishing node's,
//! `<prefix>.q.<node>` ([`durable_root`]), which that node's JetStream stream captures (QoS 0
//! stays out of it); a node subscribes under `<prefix>` and under `<prefix>.q.*` (every
//! node's).

use std::fmt::Write as _;

/// Ordinary topics' class token.
const ORDINARY: &str = "t";
/// `$` topics' class token.
const DOLLAR: &str = "s";
/// Nodes' heartbeats' class token.
const NODES: &str = "node";
/// The class token of the subjects nodes answer commands on.
const COMMANDS: &str = "ctl";
/// The class token of the subjects nodes are asked to give up sessions on.
const SESSIONS: &str = "session";
/// The class token of the subjects a share group's message is sent to its member's node on
/// (`<prefix>.share.<node>.<class>.<levels>`).
const SHARE: &str = "share";
/// The class token of the subjects those nodes answer on.
const SHARE_ACKS: &str = "sack";
/// The class token of the subjects nodes acknowledge another's interest summary on.
const SUMMARY_ACKS: &str = "iack";
/// The token of an empty level.
const EMPTY_LEVEL: &str = "%";

/// Whether `byte` stands for itself in a token.
pub(super) fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// Appends `level` as a token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for &byte in level.as_bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// `name` as one token (a node's name in a header, see `HANDLED_HEADER`).
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_level(&mut out, name);
    out
}

fn class(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        DOLLAR
    } else {
        ORDINARY
    }
}

/// The token after the prefix of the subjects QoS 1 and 2 messages travel on.
const DURABLE: &str = "q";

/// The root of the subjects of the QoS 1 and 2 messages node `node` publishes
/// (`<prefix>.q.<node>`): topics map under it as under `prefix`.
pub(crate) fn durable_root(prefix: &str, node: &str) -> String {
    let mut out = format!("{prefix}.{DURABLE}.");
    push_level(&mut out, node);
    out
}

/// The last token of the subject a node stores its QoS 1 and 2 messages on, in batches
/// (`<prefix>.q.<node>.b`: no topic maps to it, so no filter receives it).
const BATCH: &str = "b";

/// The subject node `node` stores batches of its QoS 1 and 2 messages on, in its stream.
pub(crate) fn batch_subject(prefix: &str, node: &str) -> String {
    format!("{}.{BATCH}", durable_root(prefix, node))
}

/// Whether `subject` is a node's batch subject ([`batch_subject`]).
pub(crate) fn is_batch(prefix: &str, subject: &str) -> bool {
    let under = subject.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')).and_then(|r| r.strip_prefix(DURABLE));
    let node_and_last = under.and_then(|r| r.strip_prefix('.')).and_then(|r| r.split_once('.'));
    node_and_last.is_some_and(|(node, last)| !node.is_empty() && last == BATCH)
}

/// The root under which filters receive every node's QoS 1 and 2 messages (`<prefix>.q.*`).
pub(crate) fn every_durable_root(prefix: &str) -> String {
    format!("{prefix}.{DURABLE}.*")
}

/// The name of the cluster's JetStream KV bucket `what` (`sessions`, `state`, ...) for subject
/// prefix `prefix`: a bucket name holds no `.`.
pub(crate) fn kv_bucket(prefix: &str, what: &str) -> String {
    format!("{}_{what}", prefix.replace('.', "_"))
}

/// What the name of every node's stream starts with (see [`stream`]).
pub(crate) fn stream_name_prefix(prefix: &str) -> String {
    format!("{}_messages_", prefix.replace('.', "_"))
}

/// FNV-1a of `bytes`: a hash that is the same in every build and on every platform (for what
/// outlives a process, or must come out alike on every node).
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The JetStream stream that keeps the QoS 1 and 2 messages node `node` publishes: its name
/// and the subjects it captures. A name holds only `A-Za-z0-9_-` (NATS also makes a directory
/// of it): the node's name with other characters as `_`, and a hash of the exact name, so
/// that two nodes never share a stream.
pub(crate) fn stream(prefix: &str, node: &str) -> (String, String) {
    let plain: String = node.chars().map(|c| if c.is_ascii() && is_plain(c as u8) { c } else { '_' }).collect();
    // Stable across builds and platforms: the name outlives the process.
    let hash = stable_hash(node.as_bytes());
    let name = format!("{}{plain}_{:08x}", stream_name_prefix(prefix), hash as u32);
    (name, format!("{}.>", durable_root(prefix, node)))
}

/// The subject node `name` says it runs on (every [`super::HEARTBEAT`]).
pub(crate) fn node_subject(prefix: &str, name: &str) -> String {
    let mut out = format!("{prefix}.{NODES}.");
    push_level(&mut out, name);
    out
}

/// The subject node `name` answers `broker ctl` commands on (`cluster call`).
pub(crate) fn command_subject(prefix: &str, name: &str) -> String {
    let mut out = format!("{prefix}.{COMMANDS}.");
    push_level(&mut out, name);
    out
}

/// The subject on which node `name` is asked to give up sessions (`ownership`).
pub(crate) fn session_subject(prefix: &str, name: &str) -> String {
    let mut out = format!("{prefix}.{SESSIONS}.");
    push_level(&mut out, name);
    out
}

/// The NATS queue group of MQTT share group `group` at filter `path`: one per pair, as MQTT 5
/// names a shared subscription by its share name and filter (§4.8.2).
pub(crate) fn queue_group(prefix: &str, group: &str, path: &str) -> String {
    let mut out = format!("{prefix}.");
    push_level(&mut out, group);
    out.push('.');
    push_level(&mut out, path);
    out
}

/// The root of the subjects on which node `node` is sent the messages its share groups' members
/// were picked for (`<prefix>.share.<node>`; topics map under it as under the prefix).
pub(crate) fn share_root(prefix: &str, node: &str) -> String {
    let mut out = format!("{prefix}.{SHARE}.");
    push_level(&mut out, node);
    out
}

/// The subject node `node` is answered on for the share group message numbered `id` it sent
/// another node, and (`id` `None`) the filter of all of them.
pub(crate) fn share_ack(prefix: &str, node: &str, id: Option<u64>) -> String {
    let mut out = format!("{prefix}.{SHARE_ACKS}.");
    push_level(&mut out, node);
    match id {
        Some(id) => {
            let _ = write!(out, ".{id}");
        }
        None => out.push_str(".*"),
    }
    out
}

/// The subject on which node `node` hears that the others have its interest summary in their
/// view (`summary`).
pub(crate) fn summary_ack(prefix: &str, node: &str) -> String {
    let mut out = format!("{prefix}.{SUMMARY_ACKS}.");
    push_level(&mut out, node);
    out
}

/// The subject filter of every node's heartbeat.
pub(crate) fn every_node(prefix: &str) -> String {
    format!("{prefix}.{NODES}.*")
}

/// The subject a message on `topic` (a valid topic: no wildcards) is published on.
pub(crate) fn topic_to_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 3 + topic.len() + topic.len() / 2);
    out.push_str(prefix);
    out.push('.');
    out.push_str(class(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// The subject filters that together receive every message `filter` (a valid filter, without
/// `$share/group/`) matches: one, or two for a filter ending in `#` that has levels before it.
pub(crate) fn filter_to_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(prefix.len() + 3 + filter.len() + filter.len() / 2);
    out.push_str(prefix);
    out.push('.');
    out.push_str(class(filter));
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "#" => {
                parent = Some(out.clone());
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            level => {
                out.push('.');
                push_level(&mut out, level);
            }
        }
    }
    match parent {
        // `#` alone: the class itself is no topic.
        Some(parent) if filter != "#" => vec![out, parent],
        _ => vec![out],
    }
}

/// The topic `subject` stands for, if it is one of ours under `prefix`.
pub(crate) fn subject_to_topic(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let under_node = |root: &str| rest.strip_prefix(root).and_then(|r| r.strip_prefix('.'));
    match under_node(DURABLE).or_else(|| under_node(SHARE)) {
        // `<prefix>.q.<node>.<class>...`, `<prefix>.share.<node>.<class>...`
        Some(of_node) => class_and_levels_to_topic(of_node.split_once('.')?.1),
        None => class_and_levels_to_topic(rest),
    }
}

/// The topic of `<class>.<levels>`.
fn class_and_levels_to_topic(rest: &str) -> Option<String> {
    let (class, levels) = rest.split_once('.')?;
    if class != ORDINARY && class != DOLLAR {
        return None;
    }
    let mut topic = Vec::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        if token == EMPTY_LEVEL {
            continue;
        }
        let bytes = token.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'%' {
                let hex = token.get(at + 1..at + 3)?;
                topic.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            } else {
                topic.push(bytes[at]);
                at += 1;
            }
        }
    }
    let topic = String::from_utf8(topic).ok()?;
    // The class must be the one the topic would have been given.
    (class == self::class(&topic)).then_some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "mqtt";

    /// Whether NATS subject filter `filter` matches `subject` (NATS's rules).
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let (f, s): (Vec<_>, Vec<_>) = (filter.split('.').collect(), subject.split('.').collect());
        for (i, token) in f.iter().enumerate() {
            match *token {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }

    /// Whether MQTT `filter` matches `topic` (MQTT §4.7).
    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let (f, t): (Vec<_>, Vec<_>) = (filter.split('/').collect(), topic.split('/').collect());
        for (i, level) in f.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < t.len() => {}
                l if t.get(i) == Some(&l) => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    fn is_valid_subject(subject: &str) -> bool {
        subject.split('.').all(|t| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>'))
    }

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "/",
        "/a",
        "a/",
        "a//b",
        "//",
        "a.b/c",
        "a*/>b",
        "sp ace/tab\there",
        "%/%41/100%",
        "$SYS/brokers/n1/uptime",
        "$share",
        "a$/b",
        "ünïcödé/日本",
        "-_-/_",
    ];

    #[test]
    fn every_topic_makes_a_valid_subject_that_reads_back() {
        for topic in TOPICS {
            let subject = topic_to_subject(P, topic);
            assert!(is_valid_subject(&subject), "{topic:?} -> {subject:?}");
            assert_eq!(subject_to_topic(P, &subject).as_deref(), Some(*topic), "{subject}");
        }
        assert_eq!(topic_to_subject(P, "a.b/ /$x"), "mqtt.t.a%2Eb.%20.%24x");
        assert_eq!(topic_to_subject(P, "/a/"), "mqtt.t.%.a.%");
        assert_eq!(topic_to_subject(P, "$SYS/x"), "mqtt.s.%24SYS.x");
    }

    #[test]
    fn subject_filters_match_exactly_what_the_mqtt_filter_does() {
        let filters = [
            "#",
            "+",
            "a/#",
            "a/+",
            "+/+",
            "+/#",
            "a/+/c",
            "/#",
            "+/",
            "a//b",
            "a.b/#",
            "$SYS/#",
            "$SYS/+/n1/#",
            "+/b",
            "%/+",
            "a/b/c/#",
            "//",
        ];
        for filter in filters {
            let subjects = filter_to_subjects(P, filter);
            for subject in &subjects {
                // Wildcards are whole tokens, `>` only last.
                let plain: Vec<_> = subject.split('.').filter(|t| *t != "*").collect();
                let plain = plain.strip_suffix(&[">"]).unwrap_or(&plain).join(".");
                assert!(is_valid_subject(&plain), "{filter:?} -> {subject:?}");
            }
            for topic in TOPICS {
                let subject = topic_to_subject(P, topic);
                let by_nats = subjects.iter().filter(|f| nats_matches(f, &subject)).count();
                assert!(by_nats <= 1, "{filter} -> {subjects:?}: {topic:?} matched by {by_nats}");
                assert_eq!(by_nats == 1, mqtt_matches(filter, topic), "{filter} -> {subjects:?} on {topic:?}");
            }
        }
        assert_eq!(filter_to_subjects(P, "a/#"), ["mqtt.t.a.>", "mqtt.t.a"]);
        assert_eq!(filter_to_subjects(P, "#"), ["mqtt.t.>"]);
        assert_eq!(filter_to_subjects(P, "+/x"), ["mqtt.t.*.x"]);
    }

    #[test]
    fn foreign_or_damaged_subjects_are_no_topic() {
        for subject in ["other.t.a", "mqtt", "mqtt.t", "mqtt.x.a", "mqtt.t.%4", "mqtt.t.%ZZ", "mqtt.t.%FF", "mqtt.s.a"]
        {
            assert_eq!(subject_to_topic(P, subject), None, "{subject}");
        }
    }

    /// QoS 1/2 subjects live under a root per node: its stream captures them and nothing
    /// else, every node's filters (under `<prefix>.q.*`) receive them, a filter under one
    /// family never matches a subject under the other, and every subject reads back.
    #[test]
    fn the_durable_roots_are_apart_from_the_plain_one() {
        let durable = durable_root(P, "emqx@n.1");
        assert_eq!(durable, "mqtt.q.emqx%40n%2E1");
        let (stream_name, captured) = stream(P, "emqx@n.1");
        assert!(stream_name.starts_with("mqtt_messages_emqx_n_1_"), "{stream_name}");
        assert_eq!(captured, "mqtt.q.emqx%40n%2E1.>");
        assert_ne!(stream(P, "emqx@n1").0, stream(P, "emqx_n1").0, "names that read alike get streams apart");
        assert!(stream("a.b", "n").0.starts_with("a_b_messages_n_"));
        let every = every_durable_root(P);
        for topic in ["a", "q", "q/t/x", "$SYS/x", "", "/"] {
            let plain = topic_to_subject(P, topic);
            let stored = topic_to_subject(&durable, topic);
            assert!(!nats_matches(&captured, &plain), "{plain}");
            assert!(nats_matches(&captured, &stored), "{stored}");
            assert!(!nats_matches(&stream(P, "other").1, &stored), "{stored}");
            assert_eq!(subject_to_topic(P, &plain).as_deref(), Some(topic));
            assert_eq!(subject_to_topic(P, &stored).as_deref(), Some(topic));
            for filter in ["#", "+", "q/#", "+/t/#", "$SYS/#", "a", "q/t/x"] {
                let matches = mqtt_matches(filter, topic);
                let under = |root: &str, subject: &str| {
                    filter_to_subjects(root, filter).iter().any(|f| nats_matches(f, subject))
                };
                assert!(!under(P, &stored), "{filter} under {P} matched {stored}");
                assert!(!under(&every, &plain), "{filter} under {every} matched {plain}");
                assert_eq!(under(&every, &stored), matches, "{filter} under {every} and {stored}");
            }
        }
    }

    /// A share group's message sent to one node reads back to its topic, is received by no
    /// filter's subjects (plain or durable) nor by another node's, and its answers are apart.
    #[test]
    fn share_subjects_are_per_node_and_apart_from_every_filter() {
        let root = share_root(P, "emqx@n.1");
        assert_eq!(root, "mqtt.share.emqx%40n%2E1");
        let mine = format!("{root}.>");
        for topic in ["a", "share/x", "$SYS/x", "", "/"] {
            let subject = topic_to_subject(&root, topic);
            assert!(is_valid_subject(&subject), "{subject}");
            assert_eq!(subject_to_topic(P, &subject).as_deref(), Some(topic));
            assert!(nats_matches(&mine, &subject));
            assert!(!nats_matches(&format!("{}.>", share_root(P, "other")), &subject));
            for filter in ["#", "+", "share/#", "+/#", "$SYS/#", "a"] {
                for under in [P.to_owned(), every_durable_root(P)] {
                    assert!(!filter_to_subjects(&under, filter).iter().any(|f| nats_matches(f, &subject)), "{filter}");
                }
            }
        }
        assert_eq!(share_ack(P, "emqx@n1", Some(42)), "mqtt.sack.emqx%40n1.42");
        assert_eq!(summary_ack(P, "emqx@n1"), "mqtt.iack.emqx%40n1");
        let batch = batch_subject(P, "emqx@n.1");
        assert_eq!(batch, "mqtt.q.emqx%40n%2E1.b");
        assert!(is_batch(P, &batch));
        assert!(nats_matches(&stream(P, "emqx@n.1").1, &batch), "its node's stream takes it");
        assert_eq!(subject_to_topic(P, &batch), None, "no topic maps to it");
        assert!(!is_batch(P, "mqtt.q.emqx%40n1.t.b"));
        assert!(!is_batch(P, "mqtt.t.b"));
        assert!(nats_matches(&share_ack(P, "emqx@n1", None), &share_ack(P, "emqx@n1", Some(42))));
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a");
    }
}
