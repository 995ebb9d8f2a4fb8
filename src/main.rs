use std::process::ExitCode;

fn main() -> ExitCode {
    charrnn::memory::keep_freed_memory();
    ExitCode::from(charrnn::run_command_line(std::env::args_os()))
}
