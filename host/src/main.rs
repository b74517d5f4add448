//! The effe-host binary: everything is in the library (`lib.rs`).

// mimalloc: fewer instructions per allocation than glibc's malloc, and the request path
// allocates (h2 most): −7% instructions per h2c request, −1.6% on HTTP/1.1.
// Without transparent huge pages (`no_thp`), which made idle RSS 6 MiB larger.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    effe_host::main()
}
