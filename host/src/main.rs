//! The effe-host binary: everything is in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    effe_host::main()
}
