fn main() -> std::process::ExitCode {
    runbook::cli::main()
}
