fn main() -> std::process::ExitCode {
    warmpool::cli::main()
}
