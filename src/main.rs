use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(charrnn::run_command_line(std::env::args_os()))
}
