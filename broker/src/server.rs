//! Starting and stopping the broker: data directory lock, node, plugins, ctl, listener.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{self, Overrides, Settings};
use crate::ctl;
use crate::hooks::Hooks;
use crate::node::Node;
use crate::plugins::host_api::HostShared;
use crate::plugins::manager::{Manager, ManagerPaths};
use crate::router::Router;
use crate::stats::Stats;

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
        .try_init();
}

/// Takes the data directory's lock file, so that two brokers never share one directory.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("broker.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!("another broker (pid {}) is already running on data directory {}", pid.trim(), data_dir.display());
        }
        Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Raises the open-file limit to its hard maximum: each client costs the broker one
/// descriptor (its socket). Returns how many clients the limit leaves descriptors for (64
/// are kept for the broker's own files, plugins and the ctl socket); no listener takes more.
/// Ignores SIGXFSZ: a write past the file size limit (`ulimit -f`) then fails with EFBIG, which
/// the store reports as full, instead of killing the broker.
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn raise_file_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return usize::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                limit = wanted;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).saturating_sub(64).max(1)
}

/// The runtime that serves the network: `threads` workers, or one per core the process may
/// run on (tokio's default, which follows the CPU affinity mask).
///
/// Tokio's LIFO slot is turned off. With it, a worker runs the task woken last first, so of
/// two clients whose packets came in one poll of the sockets, the later one was served
/// first: a PUBLISH routed before a SUBSCRIBE that reached the broker earlier
/// (measured by `bench --bin arrival_order`). Without it, woken tasks run in the order they were
/// woken, which is the order their data arrived. (The setting needs `--cfg tokio_unstable`,
/// set in `.cargo/config.toml`; a build without it keeps the slot.)
fn network_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(overrides: &Overrides) -> anyhow::Result<()> {
    let started = (Instant::now(), SystemTime::now());
    let settings = config::load(overrides)?;
    crate::malloc::tune(&settings.broker);
    ignore_file_size_signal();
    init_logging(&settings);
    if !settings.ignored_variables.is_empty() {
        tracing::warn!(
            "{} in the environment name no setting and are ignored (a setting of a section is \
             BROKER_SECTION__KEY; Kubernetes sets BROKER_PORT and the like for a Service named broker)",
            settings.ignored_variables.join(", ")
        );
    }
    let descriptors = raise_file_limit();

    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
    let data_dir = settings.data_dir.canonicalize()?;
    let _lock = lock_data_dir(&data_dir)?;
    let plugins_dir = config::plugins_dir(&settings).context("cannot find the plugins directory")?;
    let store = open_store(&settings, &data_dir)?;

    let zone = settings.mqtt.zone()?;
    let tcp_limits = crate::listener::Limits {
        max_connections: zone.max_connections,
        max_conn_rate: settings.mqtt.max_conn_rate,
        max_conns_per_ip: settings.mqtt.max_conns_per_ip,
    };
    let proxy_timeout = settings.listener.proxy_protocol_timeout()?;
    let listeners = crate::listener::plan(&settings.listener, tcp_limits, descriptors, proxy_timeout)?;
    let (sys_interval, sys_heartbeat) = (settings.broker.sys_interval()?, settings.broker.sys_heartbeat()?);
    let trim_every = settings.broker.malloc_trim_interval()?;
    let runtime = network_runtime(settings.broker.network_threads())?;
    tracing::info!("{} network threads", runtime.metrics().num_workers());
    if let Some(every) = trim_every {
        crate::malloc::start_trimmer(every).context("cannot start the malloc-trim thread")?;
    }

    let stats = Arc::new(Stats::new(started.0));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
    let hooks = Arc::new(
        Hooks::new(failed_tx)
            .with_answer_timeout(settings.broker.hook_answer_timeout()?)
            .with_publish_pipeline(settings.broker.hook_pipeline()?),
    );
    let router = Router::new(settings.broker.shared_subscription_strategy);
    let auth = crate::auth::Auth::new(settings.allow_anonymous, settings.auth.policy()?);
    let mut node = Node::new(zone, hooks.clone(), stats, router).with_auth(auth).with_name(&settings.node_name);
    if settings.persistence.enabled {
        node = node.with_persistence(store.clone());
    }
    if let Some(config) = settings.cluster.config(&settings.node_name, settings.broker.shared_subscription_strategy)? {
        node = node.with_cluster(runtime.block_on(crate::cluster::Cluster::connect(config))?);
    }
    let node = Arc::new(node);
    let shared = Arc::new(HostShared {
        broker_version: env!("CARGO_PKG_VERSION").to_owned(),
        node_name: settings.node_name.clone(),
        data_dir: data_dir.to_string_lossy().into_owned(),
        started_at: started.1,
        node: node.clone(),
        store: store.clone(),
        manager: OnceLock::new(),
        plugin_metrics: Default::default(),
        plugin_stats: Default::default(),
    });
    let manager = Arc::new(Manager::new(
        ManagerPaths { plugins_dir: plugins_dir.clone(), loaded_plugins: data_dir.join("loaded_plugins") },
        settings.plugins.clone(),
        shared.clone(),
        hooks.clone(),
    ));
    let _ = shared.manager.set(Arc::<Manager>::downgrade(&manager));
    tracing::info!(plugins_dir = %plugins_dir.display(), data_dir = %data_dir.display(), "starting plugins");
    manager.boot();

    runtime.block_on(async {
        if let Some(cluster) = &node.cluster {
            let weak = Arc::downgrade(&node);
            cluster.start(weak);
            tokio::spawn(Node::share_backlogs(node.clone(), cluster.revive_margin()));
            cluster.share_state(store.clone(), &settings.cluster.shared_state);
        }
        if node.persistence.is_some() {
            let restored = Node::restore_sessions(&node).context("cannot read the persistent sessions back")?;
            tracing::info!("{restored} persistent sessions restored");
            tokio::spawn(Node::own_restored(node.clone()));
            tokio::spawn(Node::keep_alive_mark(node.clone()));
        }
        let manager_thread = ctl::ManagerThread::start(manager.clone())?;
        if let Some(cluster) = &node.cluster {
            cluster.serve_commands(Arc::new(manager_thread.clone()));
        }
        {
            let manager_thread = manager_thread.clone();
            tokio::spawn(async move {
                while let Some(handle) = failed_rx.recv().await {
                    manager_thread.run(move |manager| manager.stop_failed(handle)).await;
                }
            });
        }
        let socket = ctl::socket_path(&data_dir);
        let ctl_listener =
            ctl::bind(&socket).with_context(|| format!("cannot bind ctl socket {}", socket.display()))?;
        tokio::spawn(ctl::serve(ctl_listener, manager_thread));

        for plan in listeners {
            let (setting, bind) = (plan.setting(), plan.bind());
            let local =
                plan.start(node.clone()).await.with_context(|| format!("cannot listen on {bind} ({setting})"))?;
            match settings.allow_anonymous.exposure(local) {
                Some(told) if settings.allow_anonymous == crate::auth::AllowAnonymous::Yes => tracing::warn!("{told}"),
                Some(told) => tracing::info!("{told}"),
                None => {}
            }
        }
        tokio::spawn(crate::sys::run(shared.clone(), sys_interval, sys_heartbeat));

        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = std::fs::remove_file(&socket);
        // MQTT 5 clients are told (DISCONNECT 0x8B); every connection gets a moment to close.
        node.sessions.kick_all(crate::mqtt::reason::SERVER_SHUTTING_DOWN);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while node.stats.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Their wills, published as they closed, reach the other nodes before this one goes.
        if let Some(cluster) = &node.cluster {
            cluster.flushed().await;
        }
        anyhow::Ok(())
    })?;
    manager.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    store.close().context("cannot write the store's last changes")?;
    Ok(())
}

/// Opens the store, or says why the broker cannot start: a damaged, newer or busy store is
/// never replaced by an empty one.
fn open_store(settings: &config::Settings, data_dir: &std::path::Path) -> anyhow::Result<store::Store> {
    let dir = settings.persistence.dir(data_dir);
    let backend = store::Embedded::open(&dir).with_context(|| format!("cannot open the store in {}", dir.display()))?;
    tracing::info!(store = %backend.path().display(), sync = ?settings.persistence.sync, "store opened");
    Ok(store::Store::new(backend, settings.persistence.sync_mode()?)?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
