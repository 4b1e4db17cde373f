//! The `scopegate` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
