use std::process::ExitCode;

fn main() -> ExitCode {
    grantd::cli::main()
}
