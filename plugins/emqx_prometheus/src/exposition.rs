//! A writer of the Prometheus text exposition format, version 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>): each family once, with its
//! `# HELP` and `# TYPE` lines, then its samples; label values and help text escaped as the
//! format says.

use std::collections::BTreeSet;
use std::fmt::{Display, Write};

/// The `Content-Type` of a scrape answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the broker restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A scrape answer being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    families: BTreeSet<String>,
    current: Option<String>,
}

impl Exposition {
    /// An empty answer.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts the family `name` (already a valid metric name, see [`metric_name`]): writes its
    /// `# HELP` and `# TYPE` lines. Returns `false`, and writes nothing, when a family of that
    /// name was written already (a family may appear only once); its samples are then dropped
    /// until the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> bool {
        if !self.families.insert(name.to_owned()) {
            self.current = None;
            return false;
        }
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self.current = Some(name.to_owned());
        true
    }

    /// Writes one sample of the current family, with `labels` (name, value) in that order.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        let Some(name) = &self.current else { return };
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label_value(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text to send.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A metric name from a prefix and a dotted EMQX name, as EMQX's exporter makes it:
/// `metric_name("emqx_", "messages.received")` is `emqx_messages_received`. Any character a
/// metric name may not hold (`[a-zA-Z0-9_:]`) becomes `_`, so every name the broker adds is
/// exported and none breaks the format.
pub fn metric_name(prefix: &str, dotted: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + dotted.len());
    for c in prefix.chars().chain(dotted.chars()) {
        name.push(if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' });
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// A label value escaped: `\` as `\\`, `"` as `\"`, a line feed as `\n`.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escaped: `\` as `\\`, a line feed as `\n`.
pub fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_emqx() {
        assert_eq!(metric_name("emqx_", "messages.received"), "emqx_messages_received");
        assert_eq!(metric_name("emqx_", "packets.publish.received"), "emqx_packets_publish_received");
        assert_eq!(metric_name("emqx_", "delivery.dropped.queue-full"), "emqx_delivery_dropped_queue_full");
        assert_eq!(metric_name("", "9lives"), "_9lives");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_help("a\\b\nc \"quoted\""), "a\\\\b\\nc \"quoted\"");
    }

    #[test]
    fn a_family_is_written_once_with_its_samples() {
        let mut e = Exposition::new();
        assert!(e.family("x_total", Kind::Counter, "X."));
        e.sample(&[("plugin", "p\"1"), ("hook", "message.publish")], 3);
        assert!(!e.family("x_total", Kind::Counter, "again"));
        e.sample(&[], 4);
        assert!(e.family("y", Kind::Gauge, "Y."));
        e.sample(&[], 0.25);
        assert_eq!(
            e.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{plugin=\"p\\\"1\",hook=\"message.publish\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny 0.25\n"
        );
    }
}
