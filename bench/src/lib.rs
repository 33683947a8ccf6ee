//! What the benchmark programs share.

pub mod raw;

/// A multi-thread tokio runtime with `threads` workers (tokio's default, one a core, when
/// `None`), for the benchmarks' servers.
pub fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().expect("a tokio runtime")
}
