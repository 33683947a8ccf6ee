//! The broker's figures ([`Metrics`] from `Host::metrics`) as Prometheus families, named as
//! EMQX 4.x's exporter names them, from whatever names the broker reports: a stat or metric
//! the core adds later is exported with no change here.

use plugin_api::Metrics;

use crate::exposition::{metric_name, Exposition, Kind};

/// Facts about the broker's process, read beside the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    /// Resident memory in bytes, when it could be read.
    pub resident_bytes: Option<u64>,
    /// When the broker started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl Process {
    /// Reads this process's resident memory (`VmRSS` in `/proc/self/status`; the plugin runs in
    /// the broker's process) and takes the broker's start time from `started_at`.
    pub fn read(started_at: std::time::SystemTime) -> Process {
        let resident_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
            let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024)
        });
        let start_time_seconds =
            started_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        Process { resident_bytes, start_time_seconds }
    }
}

/// A scrape answer, and the names that could not be exported because their metric name was
/// taken already (two names that differ only in characters a metric name cannot hold).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The text exposition.
    pub text: String,
    /// Names left out, for a log line.
    pub clashes: Vec<String>,
}

/// Renders `metrics` and `process` in the text exposition format.
pub fn render(metrics: &Metrics, process: &Process) -> Rendered {
    let mut out = Exposition::new();
    let mut clashes = Vec::new();
    for (name, value) in &metrics.stats {
        let help = format!("EMQX stat {name}: the value now (a .max stat: the highest since the broker started).");
        if out.family(&metric_name("emqx_", name), Kind::Gauge, &help) {
            out.sample(&[], value);
        } else {
            clashes.push(name.clone());
        }
    }
    for (name, value) in &metrics.metrics {
        let help = format!("EMQX metric {name}: a count since the broker started.");
        if out.family(&metric_name("emqx_", name), Kind::Counter, &help) {
            out.sample(&[], value);
        } else {
            clashes.push(name.clone());
        }
    }
    if out.family("emqx_uptime_seconds", Kind::Gauge, "Seconds since the broker started.") {
        out.sample(&[], metrics.uptime_ms as f64 / 1000.0);
    }
    if out.family(
        "emqx_plugin_hook_calls_total",
        Kind::Counter,
        "Calls of a plugin for a hook since the plugin was loaded.",
    ) {
        for timing in &metrics.hooks {
            out.sample(&[("plugin", &timing.plugin), ("hook", &timing.hook)], timing.calls);
        }
    }
    if out.family(
        "emqx_plugin_hook_seconds_total",
        Kind::Counter,
        "Seconds spent in a plugin's calls for a hook since the plugin was loaded, measured by the broker around each call.",
    ) {
        for timing in &metrics.hooks {
            out.sample(&[("plugin", &timing.plugin), ("hook", &timing.hook)], timing.nanos as f64 / 1e9);
        }
    }
    if let Some(bytes) = process.resident_bytes {
        if out.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the broker's process in bytes.")
        {
            out.sample(&[], bytes);
        }
    }
    if out.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "When the broker started, in seconds since the Unix epoch.",
    ) {
        out.sample(&[], process.start_time_seconds);
    }
    Rendered { text: out.finish(), clashes }
}

#[cfg(test)]
mod tests {
    use plugin_api::HookTiming;

    use super::*;

    fn metrics() -> Metrics {
        Metrics {
            node: "emqx@127.0.0.1".into(),
            uptime_ms: 2500,
            stats: [("connections.count", 1), ("connections.max", 3), ("a.new.stat", 7)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            metrics: [("messages.received", 42), ("packets.publish.received", 40)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            hooks: vec![HookTiming {
                plugin: "emqx_retainer".into(),
                hook: "message.publish".into(),
                calls: 40,
                nanos: 1_500_000,
            }],
        }
    }

    #[test]
    fn every_name_is_exported_with_its_type() {
        let out = render(&metrics(), &Process { resident_bytes: Some(4096), start_time_seconds: 1.5 });
        assert!(out.clashes.is_empty());
        let text = out.text;
        for line in [
            "# TYPE emqx_connections_count gauge",
            "emqx_connections_count 1",
            "emqx_connections_max 3",
            "# TYPE emqx_a_new_stat gauge",
            "emqx_a_new_stat 7",
            "# TYPE emqx_messages_received counter",
            "emqx_messages_received 42",
            "emqx_packets_publish_received 40",
            "emqx_uptime_seconds 2.5",
            "# TYPE emqx_plugin_hook_calls_total counter",
            "emqx_plugin_hook_calls_total{plugin=\"emqx_retainer\",hook=\"message.publish\"} 40",
            "emqx_plugin_hook_seconds_total{plugin=\"emqx_retainer\",hook=\"message.publish\"} 0.0015",
            "process_resident_memory_bytes 4096",
            "process_start_time_seconds 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // Every family has its HELP line right before its TYPE line.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(lines[i - 1].starts_with(&format!("# HELP {name} ")), "{name} has no HELP");
        }
    }

    #[test]
    fn names_that_clash_are_reported_not_written_twice() {
        let mut m = metrics();
        m.metrics.insert("connections.count".into(), 9);
        let out = render(&m, &Process::default());
        assert_eq!(out.clashes, vec!["connections.count".to_owned()]);
        assert_eq!(out.text.matches("# TYPE emqx_connections_count ").count(), 1);
        assert!(!out.text.contains("emqx_connections_count 9"));
        assert!(!out.text.contains("process_resident_memory_bytes"), "left out when unknown");
    }
}
