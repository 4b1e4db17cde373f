//! The `scopegate` binary: parses the command line and hands over to the library.

/// mimalloc: the request path allocates and frees many small buffers (headers, bodies,
/// futures); measured with `bench/run instr`, it costs fewer instructions than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
