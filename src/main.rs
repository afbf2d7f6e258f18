//! The `tenant-edge` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    tenant_edge::cli::main()
}
