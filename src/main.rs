fn main() -> std::process::ExitCode {
    // Fault tests only: arms the crash points named in FAILPOINTS (see runbook::base::failpoints).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    runbook::face::cli::main()
}
