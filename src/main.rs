//! The `waas` command (see [`cli`]).

mod cli;

/// glibc's allocator spends a fifth of the relay's CPU under load (cross-thread frees
/// of request buffers); mimalloc does the same work for a fraction (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
