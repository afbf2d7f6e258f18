//! The `tenant-edge` binary: parses the command line and hands over to the library.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tenant_edge::cli::main()
}
