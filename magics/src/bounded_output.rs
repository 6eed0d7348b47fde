//! A helper command's answer, read with bounds: at most so many bytes of its stdout, and no
//! longer than a time limit, after which the command and whatever it started are killed.
//! (GPU discovery asks a helper process; `ranch-kernel doctor` runs its checks this way.)

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` in a process group of its own with its stdout piped; returns its exit
/// status and the first `max_bytes` of its stdout, or `Ok(None)` when it ran past `limit`
/// (it and its group were then killed).
pub fn output_within(command: &mut Command, limit: Duration, max_bytes: u64) -> std::io::Result<Option<(ExitStatus, String)>> {
    let mut child = command.stdout(Stdio::piped()).process_group(0).spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.take(max_bytes).read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait()? {
            Some(status) => break status,
            None if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            None => {
                crate::ranks::launch::kill_group(child.id(), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Ok(None);
            }
        }
    };
    Ok(Some((status, reader.join().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_bounded_and_a_hung_command_is_killed_with_what_it_started() {
        let (status, text) =
            output_within(Command::new("sh").args(["-c", "echo 0123456789"]), Duration::from_secs(10), 4).unwrap().unwrap();
        assert!(status.success() && text == "0123", "{text}");
        let started = Instant::now();
        // The shell's child holds stdout open too: killing the group frees the reader.
        let hung = output_within(Command::new("sh").args(["-c", "sleep 30 & sleep 30"]), Duration::from_millis(200), 64).unwrap();
        assert!(hung.is_none() && started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
