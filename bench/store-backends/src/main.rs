//! Embedded key-value backends for the broker's durable state: redb, fjall, SQLite (rusqlite).
//!
//! cargo run --release --manifest-path bench/store-backends/Cargo.toml -- [--runs 3] [--commits 300]
//!     [--backends redb,fjall,sqlite] [--no-corrupt]
//!
//! Every figure is the median over `--runs` runs; each run uses fresh temp dirs (tempfile, under
//! $TMPDIR or /tmp). The corruption tests run once (on the first run's 100k-key store).

mod fjall_store;
mod redb_store;
mod sqlite_store;
mod store;

use std::collections::HashMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use store::Backend;

const VALUE_LEN: usize = 256;
const KEYS: u64 = 100_000;
const PREFIXES: u64 = 100;

/// xorshift64*: deterministic pseudo-random bytes (values are not compressible).
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

fn value(seed: u64) -> Vec<u8> {
    Rng::new(seed + 1).bytes(VALUE_LEN)
}
/// 24-byte queue key: 8-byte prefix + 16-digit sequence number.
fn qkey(i: u64) -> Vec<u8> {
    format!("q0000000{i:016}").into_bytes()
}
fn prefix(p: u64) -> Vec<u8> {
    format!("p{p:07}").into_bytes()
}
/// Key number `i` of the 100k-key store: 100 interleaved prefixes, 1,000 keys each.
fn pkey(i: u64) -> Vec<u8> {
    format!("p{:07}{:016}", i % PREFIXES, i / PREFIXES).into_bytes()
}

/// Medians over runs, keyed by metric name.
#[derive(Default)]
struct Figures(HashMap<String, Vec<f64>>);
impl Figures {
    fn add(&mut self, key: String, v: f64) {
        self.0.entry(key).or_default().push(v);
    }
    fn med(&self, key: &str) -> Option<f64> {
        let mut v = self.0.get(key)?.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Some(v[v.len() / 2])
    }
    fn show(&self, key: &str, decimals: usize) -> String {
        match self.med(key) {
            Some(v) => format!("{v:.decimals$}"),
            None => "-".into(),
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Allocated bytes under `dir`, as `du` counts them.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let md = entry.metadata().unwrap();
        total += if md.is_dir() { du(&entry.path()) } else { md.blocks() * 512 };
    }
    total
}

fn files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let md = entry.metadata().unwrap();
        if md.is_dir() {
            files(&entry.path(), out)
        } else {
            out.push((entry.path(), md.len()))
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(entry.file_name());
        if entry.metadata().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst)
        } else {
            fs::copy(entry.path(), dst).unwrap();
        }
    }
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("storebench-").tempdir().unwrap()
}

/// 1. Durable commit latency: one transaction of `n` puts per commit.
fn commit_latency(b: Backend, n: usize, commits: usize, fig: &mut Figures) {
    let dir = tmp();
    let mut s = b.open(dir.path()).unwrap();
    let mut seq = 0u64;
    let mut lat = Vec::with_capacity(commits);
    for _ in 0..commits {
        let puts: Vec<_> = (0..n)
            .map(|_| {
                seq += 1;
                (qkey(seq), value(seq))
            })
            .collect();
        let t = Instant::now();
        s.commit(&puts, &[]).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / commits as u32;
    let k = format!("lat/{}/{n}", b.name());
    fig.add(format!("{k}/commits"), commits as f64);
    fig.add(format!("{k}/p10"), ms(pct(&lat, 0.1)));
    fig.add(format!("{k}/p50"), ms(pct(&lat, 0.5)));
    fig.add(format!("{k}/p99"), ms(pct(&lat, 0.99)));
    fig.add(format!("{k}/mean"), ms(mean));
    fig.add(format!("{k}/mps"), n as f64 / mean.as_secs_f64());
}

/// Reference for 1: append N x 280 bytes to a plain file and fdatasync it, no database.
fn fsync_baseline(n: usize, commits: usize, fig: &mut Figures) {
    let dir = tmp();
    let mut f = fs::File::create(dir.path().join("raw")).unwrap();
    let chunk = Rng::new(n as u64).bytes(n * (24 + VALUE_LEN));
    let mut lat = Vec::with_capacity(commits);
    for _ in 0..commits {
        let t = Instant::now();
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / commits as u32;
    let k = format!("lat/{RAW}/{n}");
    fig.add(format!("{k}/p10"), ms(pct(&lat, 0.1)));
    fig.add(format!("{k}/p50"), ms(pct(&lat, 0.5)));
    fig.add(format!("{k}/p99"), ms(pct(&lat, 0.99)));
    fig.add(format!("{k}/mean"), ms(mean));
    fig.add(format!("{k}/mps"), n as f64 / mean.as_secs_f64());
}
const RAW: &str = "(plain file append + fdatasync)";

/// 2. Queue churn: 100k messages in durable groups of 100; each deleted 1,000 messages later.
fn churn(b: Backend, fig: &mut Figures) {
    let dir = tmp();
    let mut s = b.open(dir.path()).unwrap();
    let t = Instant::now();
    for g in 0..KEYS / 100 {
        let puts: Vec<_> = (g * 100..g * 100 + 100).map(|i| (qkey(i), value(i))).collect();
        let dels: Vec<_> = if g >= 10 {
            (g * 100 - 1000..g * 100 - 900).map(qkey).collect()
        } else {
            vec![]
        };
        s.commit(&puts, &dels).unwrap();
    }
    let total = t.elapsed();
    let k = format!("churn/{}", b.name());
    fig.add(format!("{k}/secs"), total.as_secs_f64());
    fig.add(format!("{k}/mps"), KEYS as f64 / total.as_secs_f64());
    fig.add(format!("{k}/du_end"), du(dir.path()) as f64 / 1048576.0);
    drop(s);
    let s = b.open(dir.path()).unwrap();
    assert_eq!(s.count_all().unwrap(), 1000);
    fig.add(format!("{k}/du_reopen"), du(dir.path()) as f64 / 1048576.0);
}

/// 3 + 4. Load 100k keys under 100 prefixes, scan / get, then reopen. Returns the closed store.
fn scan_and_reopen(b: Backend, fig: &mut Figures) -> tempfile::TempDir {
    let dir = tmp();
    let before = threads();
    let mut s = b.open(dir.path()).unwrap();
    let k = format!("scan/{}", b.name());
    fig.add(format!("{k}/threads"), (threads() - before) as f64);
    let t = Instant::now();
    for c in 0..KEYS / 1000 {
        let puts: Vec<_> = (c * 1000..c * 1000 + 1000).map(|i| (pkey(i), value(i))).collect();
        s.commit(&puts, &[]).unwrap();
    }
    fig.add(format!("{k}/load"), t.elapsed().as_secs_f64());
    let mut rng = Rng::new(42);
    let mut scans = Vec::new();
    for _ in 0..200 {
        let p = prefix(rng.next() % PREFIXES);
        let t = Instant::now();
        let n = s.scan_prefix(&p).unwrap();
        scans.push(t.elapsed());
        assert_eq!(n, 1000);
    }
    scans.sort();
    fig.add(format!("{k}/scan_p50"), us(pct(&scans, 0.5)));
    let mut gets = Vec::new();
    for _ in 0..10_000 {
        let i = rng.next() % KEYS;
        let key = pkey(i);
        let t = Instant::now();
        let v = s.get(&key).unwrap();
        gets.push(t.elapsed());
        assert_eq!(v, Some(value(i)));
    }
    gets.sort();
    fig.add(format!("{k}/get_p50"), us(pct(&gets, 0.5)));
    fig.add(format!("{k}/du"), du(dir.path()) as f64 / 1048576.0);
    drop(s);

    // 4. Reopen (recovery) of the 100k-key store: open + first point get.
    let mut reopen = |variant: Backend| {
        let t = Instant::now();
        let s = variant.open(dir.path()).unwrap();
        assert_eq!(s.get(&pkey(777)).unwrap(), Some(value(777)));
        fig.add(format!("reopen/{}", variant.name()), ms(t.elapsed()));
    };
    reopen(b);
    if b == Backend::Redb {
        reopen(Backend::RedbChecked);
    }
    if b == Backend::Fjall {
        // Reopen once the memtable has been flushed to a table (no journal to replay).
        let flushed = tmp();
        copy_dir(dir.path(), flushed.path());
        let mut s = b.open(flushed.path()).unwrap();
        s.settle().unwrap();
        drop(s);
        let t = Instant::now();
        let s = b.open(flushed.path()).unwrap();
        assert_eq!(s.get(&pkey(777)).unwrap(), Some(value(777)));
        fig.add("reopen/fjall-flushed".into(), ms(t.elapsed()));
    }
    dir
}

// ---- 4b. Corruption ----

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("ERROR: {e}")),
        Err(_) => Err(format!(
            "PANIC: {}",
            PANIC_MSG.lock().unwrap().take().unwrap_or_default()
        )),
    }
}

fn corrupt(path: &Path, how: &str) {
    let len = fs::metadata(path).unwrap().len();
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    match how {
        "truncate-half" => f.set_len(len / 2).unwrap(),
        "overwrite-4KiB-mid" => {
            f.seek(SeekFrom::Start(len / 2)).unwrap();
            f.write_all(&Rng::new(7).bytes(4096.min(len as usize / 2))).unwrap();
        }
        _ => unreachable!(),
    }
    f.sync_all().unwrap();
}

/// Damages the largest file whose path contains `within` in copies of `pristine`, then opens and reads.
fn corruption(b: Backend, pristine: &Path, label: &str, within: &str) {
    let mut all = Vec::new();
    files(pristine, &mut all);
    let (target, size) = all
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains(within))
        .max_by_key(|(_, len)| *len)
        .cloned()
        .unwrap();
    let rel = target.strip_prefix(pristine).unwrap().to_path_buf();
    let listing: Vec<String> = all
        .iter()
        .map(|(p, l)| format!("{}={}K", p.strip_prefix(pristine).unwrap().display(), l / 1024))
        .collect();
    println!("  {label}: files {}", listing.join(" "));
    println!("  {label}: damaging {} ({size} bytes)", rel.display());
    for how in ["truncate-half", "overwrite-4KiB-mid"] {
        for variant in if b == Backend::Redb { vec![Backend::Redb, Backend::RedbChecked] } else { vec![b] } {
            let dir = tmp();
            copy_dir(pristine, dir.path());
            corrupt(&dir.path().join(&rel), how);
            let name = variant.name();
            let opened = guarded(|| variant.open(dir.path()));
            let after = fs::metadata(dir.path().join(&rel)).map(|m| m.len());
            println!("  {name:<19} {how:<19} file size after the open attempt: {after:?}");
            let s = match opened {
                Ok(s) => s,
                Err(e) => {
                    println!("  {name:<19} {how:<19} open -> {e}");
                    continue;
                }
            };
            let count = guarded(|| s.count_all());
            let (mut ok, mut missing, mut wrong, mut errs, mut first_err) = (0, 0, 0, 0, None);
            for i in 0..KEYS {
                match guarded(|| s.get(&pkey(i))) {
                    Ok(Some(v)) if v == value(i) => ok += 1,
                    Ok(Some(_)) => wrong += 1,
                    Ok(None) => missing += 1,
                    Err(e) => {
                        errs += 1;
                        first_err.get_or_insert(e);
                    }
                }
            }
            println!(
                "  {name:<19} {how:<19} open -> OK; full scan -> {}; gets of {KEYS}: {ok} intact, {missing} missing, {wrong} wrong value, {errs} errors{}",
                match count { Ok(n) => format!("{n} entries"), Err(e) => e },
                first_err.map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            if variant == Backend::Sqlite {
                let r = guarded(|| s.integrity_check().expect("sqlite has one"));
                println!("  {name:<19} {how:<19} PRAGMA integrity_check -> {}", r.unwrap_or_else(|e| e));
            }
            drop(guarded(|| {
                drop(s);
                Ok(())
            }));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let runs: usize = arg("--runs").map_or(3, |v| v.parse().unwrap());
    let commits: usize = arg("--commits").map_or(300, |v| v.parse().unwrap());
    let no_corrupt = args.iter().any(|a| a == "--no-corrupt");
    let backends: Vec<Backend> = arg("--backends")
        .unwrap_or("redb,fjall,sqlite".into())
        .split(',')
        .map(|n| match n {
            "redb" => Backend::Redb,
            "fjall" => Backend::Fjall,
            "sqlite" => Backend::Sqlite,
            _ => panic!("unknown backend {n}"),
        })
        .collect();
    std::panic::set_hook(Box::new(|info| {
        *PANIC_MSG.lock().unwrap() = Some(format!("{info}").replace('\n', " "));
    }));

    let loadavg = || fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let load_start = loadavg();
    let mut fig = Figures::default();
    let mut corrupt_done = no_corrupt;
    for run in 1..=runs {
        eprintln!("run {run}/{runs}");
        for n in [1usize, 10, 100, 1000] {
            let c = if n == 1000 { commits.min(100) } else { commits };
            eprintln!("  baseline fdatasync N={n} x{c}");
            fsync_baseline(n, c, &mut fig);
        }
        for &b in &backends {
            for n in [1usize, 10, 100, 1000] {
                let c = if n == 1000 { commits.min(100) } else { commits };
                eprintln!("  {} commit latency N={n} x{c}", b.name());
                commit_latency(b, n, c, &mut fig);
            }
            eprintln!("  {} churn", b.name());
            churn(b, &mut fig);
            eprintln!("  {} scan/get/reopen", b.name());
            let store = scan_and_reopen(b, &mut fig);
            if !corrupt_done {
                if run == 1 && b == *backends.last().unwrap() {
                    corrupt_done = true;
                }
                println!("\n## corruption, {} (100k-key store, closed cleanly, then damaged)", b.name());
                let main_file = match b {
                    Backend::Fjall => ".jnl",
                    Backend::Sqlite => "store.sqlite",
                    _ => "store.redb",
                };
                corruption(b, store.path(), "as written", main_file);
                if b == Backend::Fjall {
                    // Second case: memtable flushed into tables before the damage.
                    let dir = tmp();
                    copy_dir(store.path(), dir.path());
                    let mut s = b.open(dir.path()).unwrap();
                    s.settle().unwrap();
                    drop(s);
                    corruption(b, dir.path(), "after flush", "/tables/");
                }
            }
        }
    }

    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let probe = tmp();
    let df = std::process::Command::new("df").arg("-T").arg(probe.path()).output();
    println!("\n## temp dirs under {}; df -T:", probe.path().parent().unwrap().display());
    if let Ok(out) = df {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!(
        "## cores: {}; /proc/loadavg at start: {load_start}; at end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("## NOTE: ran beside other work on a shared machine: figures are noisy.");
    println!("\n## figures: median of {runs} runs, {commits} commits per N (100 for N=1000)");
    println!("## 24-byte keys, 256-byte incompressible values; every commit fsync'd before it returns");
    println!("\n1. durable commit latency (one transaction of N puts)");
    println!("| backend | N | p10 ms | p50 ms | p99 ms | mean ms | msgs/s (N / mean) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for name in names.iter().chain([&RAW]) {
        for n in [1, 10, 100, 1000] {
            let k = format!("lat/{name}/{n}");
            println!(
                "| {name} | {n} | {} | {} | {} | {} | {} |",
                fig.show(&format!("{k}/p10"), 2),
                fig.show(&format!("{k}/p50"), 2),
                fig.show(&format!("{k}/p99"), 2),
                fig.show(&format!("{k}/mean"), 2),
                fig.show(&format!("{k}/mps"), 0)
            );
        }
    }
    println!("\n2. queue churn: 100,000 msgs, durable groups of 100, each deleted 1,000 msgs later");
    println!("| backend | total s | msgs/s | du at end MiB | du after reopen MiB |");
    println!("|---|---:|---:|---:|---:|");
    for name in &names {
        let k = format!("churn/{name}");
        println!(
            "| {name} | {} | {} | {} | {} |",
            fig.show(&format!("{k}/secs"), 2),
            fig.show(&format!("{k}/mps"), 0),
            fig.show(&format!("{k}/du_end"), 1),
            fig.show(&format!("{k}/du_reopen"), 1)
        );
    }
    println!("\n3/4. 100,000 keys in 100 prefixes (loaded in 100 durable commits of 1,000)");
    println!("| backend | load s | du MiB | prefix scan (1,000 keys) p50 us | point get p50 us | reopen+first get ms | threads started by open |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for name in &names {
        let k = format!("scan/{name}");
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fig.show(&format!("{k}/load"), 2),
            fig.show(&format!("{k}/du"), 1),
            fig.show(&format!("{k}/scan_p50"), 0),
            fig.show(&format!("{k}/get_p50"), 2),
            fig.show(&format!("reopen/{name}"), 1),
            fig.show(&format!("{k}/threads"), 0)
        );
        if *name == "redb" {
            println!("| redb+check_on_open | | | | | {} | |", fig.show("reopen/redb+check_on_open", 1));
        }
        if *name == "fjall" {
            println!("| fjall, memtable flushed before close | | | | | {} | |", fig.show("reopen/fjall-flushed", 1));
        }
    }
}
