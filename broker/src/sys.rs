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

use plugin_api::emqx;

use crate::message::{Head, Message};
use crate::plugins::host_api::HostShared;

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
    publish(shared, format!("$SYS/brokers/{node}/sysdescr"), emqx::SYSDESCR.to_owned(), true);
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
    let uptime = emqx::uptime(shared.node.stats.uptime_ms() / 1000);
    publish(shared, format!("$SYS/brokers/{node}/uptime"), uptime, false);
    publish(shared, format!("$SYS/brokers/{node}/datetime"), emqx::datetime(), false);
}

fn publish(shared: &HostShared, topic: String, payload: String, retain: bool) {
    let head = Head { qos: 0, retain, expires_at: None, publisher: 0, timestamp_ms: crate::now_ms(), origin: None };
    let message = Message::new(head, &topic, payload.as_bytes(), &[]);
    shared.node.publish_as_broker(message);
}
