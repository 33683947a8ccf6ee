//! The queue and the thread that empties it. Hooks only [`Sender::enqueue`] an event's
//! fields ([`Captured`]), which never waits: past `queue_size` events waiting, the event is
//! dropped and counted, and the first drop of a burst is logged (the end of the burst too,
//! once the queue has drained to half). The thread runs at `sender_priority` (see
//! `priority`) a single-threaded tokio runtime with `pool_size` lanes; each lane builds its
//! events' bodies and POSTs them in order, each within `request_timeout`, on a keep-alive
//! connection of its own: pipelined (`enable_pipelining`, the default; see `pipeline`), or
//! one after the other (`enable_pipelining = false`, a pipeline one deep). An event goes to the
//! lane of its client id (as EMQX's `ehttpc` pool picks a worker by client id), so one
//! client's events arrive in the order they happened. A failed request (no answer, or a
//! status other than 2xx) is counted and not retried, and a run of failures is logged once at
//! each end. A dead or hanging service
//! therefore costs the queue, never the broker's MQTT traffic.
//!
//! The counts are the plugin's own (`ctl web_hook status`, exact at once) and the broker's
//! metrics `web_hook.sent`, `web_hook.failed` and `web_hook.dropped`, which the thread adds
//! up and reports every [`REPORT_EVERY`] (one `Host::metric_add` a counter, not one an
//! event: a burst of drops costs the network threads an atomic add each).
//!
//! `stop` abandons what is still queued or in flight (counted as dropped, logged) and joins
//! the thread, then reports what is left to the metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use plugin_api::Host;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use crate::body;
use crate::capture::Captured;
use crate::pipeline::{Answers, Connection, End, Target};
use crate::settings::{PayloadEncoding, Settings};

/// How often the counts go to the broker's metrics.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// What is counted, each also a broker metric.
#[derive(Debug, Clone, Copy)]
enum Count {
    Sent,
    Failed,
    Dropped,
}

impl Count {
    const ALL: [Count; 3] = [Count::Sent, Count::Failed, Count::Dropped];

    const fn metric(self) -> &'static str {
        match self {
            Count::Sent => "web_hook.sent",
            Count::Failed => "web_hook.failed",
            Count::Dropped => "web_hook.dropped",
        }
    }
}

/// What the sender counted since the plugin started (`broker ctl web_hook status`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Requests answered with a 2xx status.
    pub(crate) sent: AtomicU64,
    /// Requests that got no answer in time, or another status.
    pub(crate) failed: AtomicU64,
    /// Events dropped because the queue was full (or abandoned at stop).
    pub(crate) dropped: AtomicU64,
    /// Requests in flight now.
    pub(crate) in_flight: AtomicU64,
}

/// What the hooks and the thread share.
#[derive(Debug)]
struct Shared {
    host: Host,
    counters: Counters,
    /// Events waiting in the lanes now (the queue's length).
    queued: AtomicUsize,
    /// The most that may wait.
    queue_size: usize,
    /// Events are being dropped: the queue was full and has not drained to half since.
    overflowing: AtomicBool,
    /// [`Counters::dropped`] when the current burst of drops began.
    burst_start: AtomicU64,
    /// The last request failed.
    failing: AtomicBool,
    /// Failed in the current run of failures.
    failed_in_run: AtomicU64,
    /// Each [`Count`] as last added to the broker's metrics.
    reported: [AtomicU64; 3],
}

impl Shared {
    fn counter(&self, count: Count) -> &AtomicU64 {
        match count {
            Count::Sent => &self.counters.sent,
            Count::Failed => &self.counters.failed,
            Count::Dropped => &self.counters.dropped,
        }
    }

    /// Adds `n` to `count` (its broker metric follows at the next [`Shared::report`]), and
    /// returns what it was.
    fn count(&self, count: Count, n: u64) -> u64 {
        self.counter(count).fetch_add(n, Ordering::Relaxed)
    }

    /// Adds what was counted since the last report to the broker's metrics (`broker
    /// metrics`, `emqx_prometheus`: `emqx_web_hook_dropped`, ...). Called from one thread at
    /// a time (the sending thread, then `stop` once it has ended).
    fn report(&self) {
        for count in Count::ALL {
            let now = self.counter(count).load(Ordering::Relaxed);
            let before = self.reported[count as usize].swap(now, Ordering::Relaxed);
            if now > before {
                // A broker too old for plugin counters has them in `ctl web_hook status` only.
                let _ = self.host.metric_add(count.metric(), now - before);
            }
        }
    }
}

/// The sending side: the lanes' inputs, the counters, and the thread.
#[derive(Debug)]
pub(crate) struct Sender {
    lanes: Vec<mpsc::UnboundedSender<Captured>>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

/// The HTTP client could not be made (a TLS file that cannot be used, most often).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// A TLS file cannot be read or used; the message names the key and the file.
    #[error("web_hook.ssl.{key}: {why}")]
    Tls { key: &'static str, why: String },
    /// The URL or the headers cannot be used for a request.
    #[error("cannot make the HTTP client: {0}")]
    Client(String),
    /// The thread or its runtime could not start.
    #[error("cannot start the sending thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Sender {
    /// Builds the HTTP client and starts the thread.
    pub(crate) fn start(host: Host, settings: &Settings) -> Result<Sender, StartError> {
        let tls = crate::tls::client_config(&settings.ssl, host.data_dir())?;
        // `enable_pipelining = false` is one request at a time on each lane's connection: a
        // pipeline one deep.
        let depth = settings.pipeline_depth.unwrap_or(1);
        let target = Arc::new(Target::new(&settings.url, &settings.headers, &tls, depth).map_err(StartError::Client)?);
        let (lanes, outputs): (Vec<_>, Vec<_>) = (0..settings.pool_size).map(|_| mpsc::unbounded_channel()).unzip();
        let (shutdown, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            host,
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            queue_size: settings.queue_size,
            overflowing: AtomicBool::new(false),
            burst_start: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            failed_in_run: AtomicU64::new(0),
            reported: Default::default(),
        });
        let worker = Worker {
            target,
            url: settings.url.clone(),
            node: host.node_name().to_owned(),
            encoding: settings.encoding,
            request_timeout: settings.request_timeout,
            connect_timeout: settings.connect_timeout,
            shared: shared.clone(),
        };
        let priority = settings.sender_priority;
        let lower = move || {
            if let Err(e) = crate::priority::lower_this_thread(priority) {
                host.warn(&format!("cannot move the sending thread to priority {}: {e}", priority.name()));
            }
        };
        // The runtime's helper threads (name lookups) are background work too.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().on_thread_start(lower).build()?;
        let thread = std::thread::Builder::new().name("emqx_web_hook".to_owned()).spawn(move || {
            lower();
            runtime.block_on(worker.run(outputs, stopped));
        })?;
        Ok(Sender { lanes, shared, shutdown, thread })
    }

    /// Queues `event`, about client `client_id`, to be sent, without waiting: when the queue
    /// is full it is dropped and counted (the first of a burst logged).
    pub(crate) fn enqueue(&self, client_id: &str, event: Captured) {
        let shared = &self.shared;
        if shared.queued.fetch_add(1, Ordering::AcqRel) < shared.queue_size {
            let lane = &self.lanes[lane_of(client_id, self.lanes.len())];
            if lane.send(event).is_ok() {
                return;
            }
        }
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        self.drop_event();
    }

    /// Whether the queue is full now: an event would be dropped (so it need not be copied).
    pub(crate) fn is_full(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) >= self.shared.queue_size
    }

    /// Counts an event dropped because the queue is full (the first of a burst logged). In a
    /// burst, one atomic add and one load: the network threads do not write the same cache
    /// line twice an event.
    pub(crate) fn drop_event(&self) {
        let shared = &self.shared;
        let before = shared.count(Count::Dropped, 1);
        if !shared.overflowing.load(Ordering::Relaxed) && !shared.overflowing.swap(true, Ordering::AcqRel) {
            shared.burst_start.store(before, Ordering::Relaxed);
            shared.host.warn(&format!(
                "the queue is full ({} events wait to be sent): events are dropped until it drains \
                 (counted, not logged: broker ctl web_hook status)",
                shared.queue_size
            ));
        }
    }

    /// Events waiting in the queue now.
    pub(crate) fn queue_len(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire).min(self.shared.queue_size)
    }

    /// The most events the queue holds.
    pub(crate) fn queue_size(&self) -> usize {
        self.shared.queue_size
    }

    /// What was counted.
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether the last request failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// Stops the thread, abandoning the events still queued and the requests in flight, and
    /// joins it. Returns how many were abandoned.
    pub(crate) fn stop(self) -> u64 {
        let _ = self.shutdown.send(true);
        let _ = self.thread.join();
        let shared = &self.shared;
        let abandoned =
            shared.queued.swap(0, Ordering::AcqRel) as u64 + shared.counters.in_flight.swap(0, Ordering::AcqRel);
        shared.count(Count::Dropped, abandoned);
        shared.report();
        abandoned
    }
}

/// The lane of `client_id` among `lanes` (FNV-1a: stable and cheap).
fn lane_of(client_id: &str, lanes: usize) -> usize {
    let hash =
        client_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % lanes as u64) as usize
}

/// The thread's side.
struct Worker {
    /// The service, and how its connections are made.
    target: Arc<Target>,
    url: url::Url,
    /// This node's name, EMQX's `node` field.
    node: String,
    /// How message payloads are written.
    encoding: PayloadEncoding,
    /// The longest one request may take, and connecting.
    request_timeout: Duration,
    connect_timeout: Duration,
    shared: Arc<Shared>,
}

impl Worker {
    /// Runs one task a lane, and reports the counts every [`REPORT_EVERY`], until told to
    /// stop. Returning drops the runtime, and with it the events still queued and the
    /// requests in flight: they are abandoned.
    async fn run(self, lanes: Vec<mpsc::UnboundedReceiver<Captured>>, mut stopped: watch::Receiver<bool>) {
        let worker = Arc::new(self);
        for lane in lanes {
            tokio::spawn(worker.clone().lane(lane));
        }
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                _ = report.tick() => worker.shared.report(),
            }
        }
    }

    /// Takes `event` off the queue and builds its body, counted in flight from now on; `None`
    /// if it has none to send.
    fn take(&self, event: Captured) -> Option<Vec<u8>> {
        let waiting = self.shared.queued.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.note_drained(waiting);
        let body = body::body(&event, &self.node, self.encoding)?;
        self.shared.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(body)
    }

    /// Sends a lane's events over one connection, pipelined (see `pipeline`).
    async fn lane(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Captured>) {
        let target = &self.target;
        // Bodies taken off the queue and not yet written: events, and requests that the
        // service closed a connection without reading.
        let mut waiting: VecDeque<Vec<u8>> = VecDeque::new();
        let mut connection: Option<Connection> = None;
        loop {
            let Some(c) = connection.as_mut() else {
                // No connection: wait for an event, then open one.
                if waiting.is_empty() {
                    let Some(event) = events.recv().await else { return };
                    waiting.extend(self.take(event));
                } else {
                    match target.connect(self.connect_timeout).await {
                        Ok(c) => connection = Some(c),
                        Err(why) => waiting.drain(..).for_each(|_| self.finish(Some(why.clone()))),
                    }
                }
                continue;
            };
            // What waits goes into the pipeline as far as there is room, with the events
            // queued meanwhile.
            let room = c.room();
            while waiting.len() < room {
                match events.try_recv() {
                    Ok(event) => waiting.extend(self.take(event)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            for body in waiting.drain(..room.min(waiting.len())) {
                c.push(target, body);
            }
            let deadline = c.deadline(self.request_timeout);
            let idle_deadline = c.idle_deadline();
            let end = tokio::select! {
                biased;
                read = Connection::read(&mut c.reader, &mut c.input) => {
                    let answers = match read {
                        Ok(n) => c.answers(n == 0),
                        Err(e) => Answers { end: Some(End::Failed(format!("cannot read the answer: {e}"))), ..Answers::default() },
                    };
                    answers.outcomes.into_iter().for_each(|outcome| self.finish(outcome));
                    answers.end
                }
                wrote = Connection::write(&mut c.writer, &c.out[c.written..]), if c.has_output() => match wrote {
                    Ok(n) => {
                        c.wrote(n);
                        None
                    }
                    Err(e) => {
                        c.write_failed(format!("cannot write the request: {e}"));
                        None
                    }
                },
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    Some(End::Failed(format!("no answer within {:?}", self.request_timeout)))
                }
                // Closed before the service would close it (nothing is unanswered).
                () = sleep_until(idle_deadline.unwrap_or_else(far_future)), if idle_deadline.is_some() => Some(End::Unread),
                event = events.recv(), if c.room() > waiting.len() => {
                    let Some(event) = event else { return };
                    waiting.extend(self.take(event));
                    None
                }
            };
            let Some(end) = end else { continue };
            let Some(c) = connection.take() else { continue };
            match end {
                // Written again first, in order.
                End::Unread => c.unanswered.into_iter().rev().for_each(|u| waiting.push_front(u.body)),
                End::Failed(why) => c.unanswered.into_iter().for_each(|_| self.finish(Some(why.clone()))),
            }
        }
    }

    /// Ends a burst of drops once the queue, `waiting` long, has drained to half.
    fn note_drained(&self, waiting: usize) {
        let shared = &self.shared;
        if waiting <= shared.queue_size / 2
            && shared.overflowing.load(Ordering::Acquire)
            && shared.overflowing.swap(false, Ordering::AcqRel)
        {
            let dropped = shared
                .counters
                .dropped
                .load(Ordering::Relaxed)
                .saturating_sub(shared.burst_start.load(Ordering::Relaxed));
            shared.host.info(&format!("the queue drained: {dropped} event(s) were dropped while it was full"));
        }
    }

    /// A request is over: one fewer in flight, and what came of it counted (`None`: answered
    /// with a 2xx status; else why not). The first failure of a run is logged, and the first
    /// success after one.
    fn finish(&self, failure: Option<String>) {
        let shared = &self.shared;
        shared.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        match failure {
            None => {
                shared.count(Count::Sent, 1);
                if shared.failing.load(Ordering::Acquire) && shared.failing.swap(false, Ordering::AcqRel) {
                    let failures = shared.failed_in_run.swap(0, Ordering::AcqRel);
                    shared.host.info(&format!("{} answers again, after {failures} failed request(s)", self.url));
                }
            }
            Some(why) => {
                shared.count(Count::Failed, 1);
                shared.failed_in_run.fetch_add(1, Ordering::Relaxed);
                if !shared.failing.swap(true, Ordering::AcqRel) {
                    shared.host.warn(&format!(
                        "POST {} failed: {why}; the event is not sent again (further failures are counted, \
                         not logged: broker ctl web_hook status)",
                        self.url
                    ));
                }
            }
        }
    }
}

/// An instant no timer reaches (a day from now).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
