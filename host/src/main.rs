//! The `infercell` binary: `infercell serve` and the client commands.

fn main() -> std::process::ExitCode {
    infercell::cli::main()
}
