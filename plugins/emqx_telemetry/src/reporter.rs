//! The reporting thread: its own single-threaded tokio runtime, POSTing the report first
//! after `first_report_delay`, then every `report_interval`. A dead, slow or failing endpoint
//! only costs this thread; a failure is logged once per attempt and retried next interval.
//! `stop` interrupts a request in flight and joins the thread.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::report::Report;
use crate::settings::Settings;

/// What the reporter needs from the plugin.
pub trait Source: Send + Sync + 'static {
    /// The report to send now.
    fn report(&self) -> Report;
    /// Logs a warning through the host.
    fn warn(&self, message: &str);
    /// Logs a debug line through the host.
    fn debug(&self, message: &str);
}

#[derive(Debug)]
pub struct Reporter {
    shutdown: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Reporter {
    pub fn start(settings: Settings, source: Arc<dyn Source>) -> std::io::Result<Reporter> {
        let (shutdown, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new()
            .name("emqx_telemetry".to_owned())
            .spawn(move || runtime.block_on(run(settings, source, stopped)))?;
        Ok(Reporter { shutdown, thread })
    }

    /// Stops the thread, abandoning a request in flight, and joins it.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.thread.join();
    }
}

async fn run(settings: Settings, source: Arc<dyn Source>, mut stopped: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            source.warn(&format!("telemetry disabled: cannot build an HTTP client: {}", error_chain(&e)));
            return;
        }
    };
    let mut delay = settings.first_report_delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped.changed() => return,
        }
        delay = settings.report_interval;
        let next = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
        let attempt = client.post(&settings.url).json(&source.report()).send();
        tokio::select! {
            result = attempt => match result {
                Ok(response) if response.status().is_success() => {
                    source.debug(&format!("telemetry report sent to {}", settings.url));
                }
                Ok(response) => source.warn(&format!(
                    "telemetry report to {} failed: HTTP {}; next attempt in {next}",
                    settings.url,
                    response.status()
                )),
                Err(e) => source.warn(&format!(
                    "telemetry report to {} failed: {}; next attempt in {next}",
                    settings.url,
                    error_chain(&e)
                )),
            },
            _ = stopped.changed() => return,
        }
    }
}
