//! The `township-node` binary; everything lives in the library so tests can drive it.

/// mimalloc instead of glibc's malloc. In a catch-up, thousands of records a second are loaded as
/// automerge documents on tokio's blocking pool and what is read from them is freed on the store's
/// writer thread; glibc's arenas spent a fifth of the county's CPU in a cold sync allocating,
/// consolidating and freeing across those threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    township_node::cli::main()
}
