/// See [`ffrtmp::alloc`]: `run` and `watch` need different allocators.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: ffrtmp::alloc::ByCommand = ffrtmp::alloc::ByCommand;

fn main() -> std::process::ExitCode {
    ffrtmp::cli::main()
}
