//! Micro-benchmarks of the plugin host (criterion): one hook dispatch with 0, 1 and 5
//! plugins on the hook, and loading, unloading and reloading a plugin. Uses the real
//! `counter` plugin library: run `cargo build --release --workspace` first, then
//! `cargo bench -p broker`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use broker::hooks::Hooks;
use broker::plugins::host_api::HostShared;
use broker::plugins::instance::Instance;
use broker::plugins::library::PluginLibrary;
use broker::plugins::manager::{Manager, ManagerPaths};
use broker::relay::{Relay, RelaySettings};
use broker::router::{self, RouterSettings};
use broker::sessions::{Identity, Registry, Session};
use broker::stats::Stats;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use plugin_api::abi::{RawBytes, RawStr};
use plugin_api::Hook;

fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    assert!(dir.join("libcounter.so").exists(), "build the plugins first: cargo build --release --workspace");
    dir
}

struct Host {
    _runtime: tokio::runtime::Runtime,
    shared: Arc<HostShared>,
    hooks: Arc<Hooks>,
    data_dir: tempfile::TempDir,
}

fn host() -> Host {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let settings = RouterSettings {
        max_connections: 1000,
        max_packet_size: 1024 * 1024,
        max_inflight: 100,
        connect_timeout: Duration::from_secs(15),
    };
    let (router, publisher) = router::start(&settings, runtime.handle()).unwrap();
    let (failed, _) = tokio::sync::mpsc::unbounded_channel();
    let hooks = Arc::new(Hooks::new(failed));
    let relay = Arc::new(Relay {
        settings: RelaySettings {
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(15),
            acl_cache: None,
        },
        hooks: hooks.clone(),
        stats: Arc::new(Stats::new(Instant::now())),
        router,
        publisher,
        registry: Registry::default(),
    });
    let data_dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(HostShared {
        broker_version: "bench".into(),
        node_name: "bench@127.0.0.1".into(),
        data_dir: data_dir.path().to_string_lossy().into_owned(),
        started_at: SystemTime::now(),
        relay,
        manager: OnceLock::new(),
    });
    Host { _runtime: runtime, shared, hooks, data_dir }
}

fn dispatch(c: &mut Criterion) {
    let host = host();
    let library = Arc::new(PluginLibrary::open(&plugins_dir(), "counter", false).unwrap());
    let instances: Vec<Arc<Instance>> =
        (0..5).map(|seq| Arc::new(Instance::start(library.clone(), host.shared.clone(), "", seq).unwrap())).collect();
    let session = Session::new(Identity {
        client_id: "bench-client".into(),
        username: String::new(),
        peer: "127.0.0.1:5000".into(),
        proto_ver: 4,
        keepalive: 60,
        clean_start: true,
        expiry_interval: 0,
    });
    let topic = "bench/topic";
    let payload = [0u8; 64];
    let mut event = session.event(Hook::MessagePublish);
    event.topic = RawStr::new(topic);
    event.payload = RawBytes::new(&payload);

    let mut group = c.benchmark_group("hook dispatch (message.publish)");
    for plugins in [0usize, 1, 5] {
        host.hooks.install(&instances[..plugins]);
        group.bench_function(format!("{plugins} plugins"), |b| {
            b.iter(|| {
                // Exactly what the relay does per PUBLISH.
                if host.hooks.wants(Hook::MessagePublish) {
                    black_box(host.hooks.dispatch(black_box(&event)));
                }
            })
        });
    }
    group.finish();
    host.hooks.install(&[]);
    for instance in &instances {
        instance.stop();
    }
}

fn lifecycle(c: &mut Criterion) {
    let host = host();
    let loaded_plugins = host.data_dir.path().join("loaded_plugins");
    std::fs::write(&loaded_plugins, "{counter, true}.\n").unwrap();
    let manager = Arc::new(Manager::new(
        ManagerPaths { plugins_dir: plugins_dir(), loaded_plugins },
        Default::default(),
        host.shared.clone(),
        host.hooks.clone(),
    ));
    let _ = host.shared.manager.set(Arc::downgrade(&manager));
    let mut group = c.benchmark_group("plugin lifecycle (counter)");
    group.bench_function("load + unload", |b| {
        b.iter(|| {
            manager.load("counter", false).unwrap();
            manager.unload("counter", false).unwrap();
        })
    });
    manager.load("counter", false).unwrap();
    group.bench_function("reload (persists loaded_plugins: write + fsync + rename)", |b| {
        b.iter(|| manager.reload("counter").unwrap())
    });
    group.finish();
    manager.shutdown();
}

criterion_group!(benches, dispatch, lifecycle);
criterion_main!(benches);
