//! `$SYS` topics, as EMQX 4.x's `emqx_sys` publishes them.
//!
//! Every `broker.sys_interval`: `$SYS/brokers` (the node names), and under
//! `$SYS/brokers/<node>/`: `version`, `sysdescr` (these three with the retain flag), one
//! `stats/<name>` per gauge (`stats/connections.count`: EMQX 4 keeps the dots there) and one
//! `metrics/<name with / for .>` per counter (`metrics/messages/received`). Every
//! `broker.sys_heartbeat`: `uptime` (`1 days, 2 hours, 3 minutes, 4 seconds`) and `datetime`
//! (local time, `2026-11-27 01:02:03`). All at QoS 0, published as the broker: they go
//! through `message.publish` like any message (so a retainer keeps the retained ones).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::message::Message;
use crate::plugins::host_api::HostShared;

/// What `sysdescr` says.
pub(crate) const SYSDESCR: &str = "MQTT broker with plugins";

/// Publishes the `$SYS` topics until the runtime stops.
pub(crate) async fn run(shared: Arc<HostShared>, interval: Option<Duration>, heartbeat: Option<Duration>) {
    let mut tick = interval.map(timer);
    let mut beat = heartbeat.map(timer);
    loop {
        tokio::select! {
            _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() => publish_info(&shared),
            _ = async { beat.as_mut().unwrap().tick().await }, if beat.is_some() => publish_heartbeat(&shared),
            else => return,
        }
    }
}

/// A timer whose first tick is one period from now (EMQX publishes after the first period).
fn timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

fn publish_info(shared: &HostShared) {
    let node = &shared.node_name;
    publish(shared, "$SYS/brokers".to_owned(), node.clone(), true);
    publish(shared, format!("$SYS/brokers/{node}/version"), shared.broker_version.clone(), true);
    publish(shared, format!("$SYS/brokers/{node}/sysdescr"), SYSDESCR.to_owned(), true);
    let report = shared.metrics_report();
    for (name, value) in &report.stats {
        publish(shared, format!("$SYS/brokers/{node}/stats/{name}"), value.to_string(), false);
    }
    for (name, value) in &report.metrics {
        publish(shared, format!("$SYS/brokers/{node}/metrics/{}", name.replace('.', "/")), value.to_string(), false);
    }
}

fn publish_heartbeat(shared: &HostShared) {
    let node = &shared.node_name;
    let uptime = uptime(shared.node.stats.uptime_ms() / 1000);
    publish(shared, format!("$SYS/brokers/{node}/uptime"), uptime, false);
    publish(shared, format!("$SYS/brokers/{node}/datetime"), datetime(), false);
}

fn publish(shared: &HostShared, topic: String, payload: String, retain: bool) {
    let message = Message {
        topic: topic.into(),
        payload: Bytes::from(payload),
        qos: 0,
        retain,
        forwarded: Bytes::new(),
        expires_at: None,
        publisher: 0,
        timestamp_ms: crate::now_ms(),
    };
    shared.node.publish_as_broker(message);
}

/// Uptime as EMQX words it: `42 seconds`, `3 minutes, 42 seconds`,
/// `1 days, 0 hours, 3 minutes, 42 seconds`.
pub(crate) fn uptime(seconds: u64) -> String {
    let (days, hours, minutes, seconds) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds} seconds"),
        (0, 0, _) => format!("{minutes} minutes, {seconds} seconds"),
        (0, _, _) => format!("{hours} hours, {minutes} minutes, {seconds} seconds"),
        _ => format!("{days} days, {hours} hours, {minutes} minutes, {seconds} seconds"),
    }
}

/// Local date and time as EMQX writes it: `2026-11-27 01:02:03`.
pub(crate) fn datetime() -> String {
    let now = libc::time_t::try_from(crate::now_ms() / 1000).unwrap_or_default();
    // SAFETY: localtime_r writes only into `tm`, which we own; `now` is a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_worded_as_emqx_words_it() {
        assert_eq!(uptime(7), "7 seconds");
        assert_eq!(uptime(3 * 60 + 42), "3 minutes, 42 seconds");
        assert_eq!(uptime(2 * 3600 + 42), "2 hours, 0 minutes, 42 seconds");
        assert_eq!(uptime(86_400 + 3 * 60 + 42), "1 days, 0 hours, 3 minutes, 42 seconds");
    }

    #[test]
    fn datetime_has_emqx_shape() {
        let text = datetime();
        let shape: String = text.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
        assert_eq!(shape, "9999-99-99 99:99:99", "{text}");
    }
}
