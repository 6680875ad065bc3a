/// See ffrtmp/Cargo.toml: musl's allocator costs `ffrtmp run` page faults and
/// system calls on every start.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> std::process::ExitCode {
    ffrtmp::cli::main()
}
