//! Micro-benchmarks of the plugin host and the router (criterion): one hook dispatch with
//! 0, 1 and 5 plugins on the hook, and with `emqx_mod_rewrite` replacing the topic, loading, unloading and reloading a plugin, and matching a
//! topic in the subscription trie. Uses the real `counter` plugin library: run
//! `cargo build --release --workspace` first, then `cargo bench -p broker`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use broker::bench::{Dispatch, Lifecycle, Routing};
use criterion::{criterion_group, criterion_main, Criterion};

fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    assert!(dir.join("libcounter.so").exists(), "build the plugins first: cargo build --release --workspace");
    dir
}

fn dispatch(c: &mut Criterion) {
    let bench = Dispatch::new(&plugins_dir(), "counter", 5);
    let payload = [0u8; 64];
    let event = bench.event("bench/topic", &payload);
    let mut group = c.benchmark_group("hook dispatch (message.publish)");
    for plugins in [0usize, 1, 5] {
        bench.install(plugins);
        group.bench_function(format!("{plugins} plugins"), |b| b.iter(|| black_box(bench.dispatch(black_box(&event)))));
    }
    // The same chain of 1 counter plugin through the rewriting dispatch that `message.publish`
    // uses: what a chain that may replace the topic costs when nobody replaces it.
    bench.install(1);
    group.bench_function("1 plugin, rewriting dispatch, no replacement", |b| {
        b.iter(|| black_box(bench.dispatch_rewriting(black_box(&mut event.clone()))))
    });
    drop(bench);

    // emqx_mod_rewrite with one rule (`x/#`, `^x/y/(.+)$` -> `z/y/$1`): a topic it replaces,
    // and one its source does not match.
    let rules = r#"{"rules":[{"action":"publish","source":"x/#","re":"^x/y/(.+)$","dest":"z/y/$1"}]}"#;
    let rewrite = Dispatch::with_config(&plugins_dir(), "emqx_mod_rewrite", rules, 1);
    rewrite.install(1);
    for (what, topic) in [("replaces the topic", "x/y/1"), ("source does not match", "bench/topic")] {
        // A fresh copy each time: a replacement leaves the event pointing at the new topic,
        // which lives only as long as the returned String.
        let event = rewrite.event(topic, &payload);
        group.bench_function(format!("emqx_mod_rewrite, 1 rule, {what}"), |b| {
            b.iter(|| black_box(rewrite.dispatch_rewriting(black_box(&mut event.clone()))))
        });
    }
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    let bench = Lifecycle::new(&plugins_dir(), "counter");
    let mut group = c.benchmark_group("plugin lifecycle (counter)");
    group.bench_function("load + unload", |b| {
        b.iter(|| {
            bench.load("counter");
            bench.unload("counter");
        })
    });
    bench.load("counter");
    group.bench_function("reload (persists loaded_plugins: write + fsync + rename)", |b| {
        b.iter(|| bench.reload("counter"))
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route one topic (subscription trie)");
    for (subscribers, filters) in [(1u64, 1u64), (1000, 10)] {
        let mut bench = Routing::new(subscribers, filters);
        group.bench_function(format!("{subscribers} sessions x {filters} filters, 1 match"), |b| {
            b.iter(|| black_box(bench.route(black_box("bench/1/0/y"))))
        });
        group.bench_function(format!("{subscribers} sessions x {filters} filters, every session matches"), |b| {
            b.iter(|| black_box(bench.route(black_box("bench/1/x"))))
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch, lifecycle, routing);
criterion_main!(benches);
