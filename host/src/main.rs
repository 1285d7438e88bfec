//! The `tickfold` binary: everything lives in the library, see `cli`.

fn main() -> std::process::ExitCode {
    tickfold::cli::main()
}
