//! The `township-node` binary; everything lives in the library so tests can drive it.

fn main() -> std::process::ExitCode {
    township_node::cli::main()
}
