//! `tyd`: the operator's tool for a tyd cluster (the code is in the library).

fn main() -> std::process::ExitCode {
    tyd::main()
}
