//! The `audio_command` output: plays an audio file by running the configured command with `{file}`
//! replaced by the file's path (`["aplay", "-q", "{file}"]`). The command runs in its own process
//! group, so stopping a broadcast stops whatever the command started too (a shell, a player it
//! forks), and it is never left running: a stop ends it within two seconds, and a play that runs
//! past its deadline is ended and reported as failed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How long a stopped command gets to end after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("the program `{0}` was not found")]
    NotFound(String),
    #[error("the command could not start: {0}")]
    Spawn(String),
    #[error("the command failed ({status}): {detail}")]
    Failed { status: String, detail: String },
    #[error("the command ran longer than {0:?} and was stopped")]
    TimedOut(Duration),
}

/// A configured command, ready to play files.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    argv: Vec<String>,
}

/// How much of the command's error output is kept for the reason it failed: the end of it.
const STDERR_KEPT: usize = 400;

/// One file being played.
pub struct Playing {
    child: tokio::process::Child,
    /// The last [`STDERR_KEPT`] bytes of the command's error output, read while it runs so a
    /// chatty player never stalls on a full pipe.
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

async fn keep_tail(mut err: tokio::process::ChildStderr) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = err.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_KEPT {
            tail.drain(..tail.len() - STDERR_KEPT);
        }
    }
    tail
}

impl CommandOutput {
    /// `argv` as configured (checked at start: a program and `{file}` somewhere).
    pub fn new(argv: Vec<String>) -> CommandOutput {
        CommandOutput { argv }
    }

    /// Starts playing `file`.
    pub fn start(&self, file: &Path) -> Result<Playing, PlayError> {
        let path = file.to_string_lossy();
        let mut args = self.argv.iter().map(|a| a.replace("{file}", &path));
        let program = args
            .next()
            .ok_or_else(|| PlayError::Spawn("no program configured".into()))?;
        let mut child = tokio::process::Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => PlayError::NotFound(program.clone()),
                _ => PlayError::Spawn(e.to_string()),
            })?;
        let stderr = match child.stderr.take() {
            Some(err) => tokio::spawn(keep_tail(err)),
            None => tokio::spawn(async { Vec::new() }),
        };
        Ok(Playing { child, stderr })
    }
}

impl Playing {
    /// Waits for the play to end, at most `deadline` (then it is stopped and reported as failed).
    pub async fn finish(mut self, deadline: Duration) -> Result<(), PlayError> {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => {
                // The pipe closes when the command ends; whatever is left is read quickly.
                let tail = tokio::time::timeout(STOP_GRACE, &mut self.stderr)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let detail = String::from_utf8_lossy(&tail).trim().to_string();
                Err(PlayError::Failed {
                    status: status.to_string(),
                    detail,
                })
            }
            Ok(Err(e)) => Err(PlayError::Spawn(e.to_string())),
            Err(_) => {
                self.stop().await;
                Err(PlayError::TimedOut(deadline))
            }
        }
    }

    /// [`Playing::finish`], unless `stop` is cancelled first: then the play is stopped (within
    /// two seconds) and the answer is `Ok(false)`.
    pub async fn finish_unless(
        mut self,
        deadline: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<bool, PlayError> {
        enum Ended {
            Exited,
            Overran,
            Stopped,
        }
        let ended = tokio::select! {
            _ = self.child.wait() => Ended::Exited,
            () = tokio::time::sleep(deadline) => Ended::Overran,
            () = stop.cancelled() => Ended::Stopped,
        };
        match ended {
            // The status is read again by `finish`, which returns at once for an ended child.
            Ended::Exited => self.finish(STOP_GRACE).await.map(|()| true),
            Ended::Overran => {
                self.stop().await;
                Err(PlayError::TimedOut(deadline))
            }
            Ended::Stopped => {
                self.stop().await;
                Ok(false)
            }
        }
    }

    /// Stops the play and everything it started: SIGTERM to its process group, SIGKILL after
    /// [`STOP_GRACE`] if it is still there.
    pub async fn stop(mut self) {
        self.stderr.abort();
        let Some(pid) = self.child.id() else {
            return;
        };
        let group = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn output(argv: &[&str]) -> CommandOutput {
        CommandOutput::new(argv.iter().map(|s| s.to_string()).collect())
    }

    #[tokio::test]
    async fn the_file_is_handed_to_the_command_and_a_clean_exit_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let audio = dir.path().join("a message.wav");
        std::fs::write(&audio, b"RIFF....WAVE").unwrap();
        let played = dir.path().join("played.wav");
        let out = output(&["cp", "{file}", played.to_str().unwrap()]);
        out.start(&audio)
            .unwrap()
            .finish(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&played).unwrap(), b"RIFF....WAVE");
    }

    #[tokio::test]
    async fn failures_missing_programs_and_overruns_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let audio = dir.path().join("a.wav");
        std::fs::write(&audio, b"x").unwrap();
        let e = output(&["sh", "-c", "echo no sound card >&2; exit 3", "{file}"])
            .start(&audio)
            .unwrap()
            .finish(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PlayError::Failed { detail, .. } if detail.contains("no sound card")),
            "{e}"
        );
        assert!(matches!(
            output(&["/nonexistent/player", "{file}"]).start(&audio),
            Err(PlayError::NotFound(_))
        ));
        let started = Instant::now();
        let e = output(&["sh", "-c", "sleep 30", "{file}"])
            .start(&audio)
            .unwrap()
            .finish(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, PlayError::TimedOut(_)));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_player_that_talks_a_lot_on_stderr_neither_stalls_nor_hides_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let audio = dir.path().join("a.wav");
        std::fs::write(&audio, b"x").unwrap();
        // 1 MB of progress output (far past a pipe's 64 KB), then the reason it failed.
        let script = "head -c 1000000 /dev/zero | tr '\\0' 'p' >&2; echo device busy >&2; exit 1";
        let e = output(&["sh", "-c", script, "{file}"])
            .start(&audio)
            .unwrap()
            .finish(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PlayError::Failed { detail, .. } if detail.ends_with("device busy") && detail.len() <= STDERR_KEPT),
            "{e}"
        );
    }

    #[tokio::test]
    async fn stop_ends_the_command_and_what_it_started_within_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let audio = dir.path().join("a.wav");
        std::fs::write(&audio, b"x").unwrap();
        let marker = dir.path().join("child.pid");
        // A shell that starts a player of its own and ignores SIGTERM: the group kill still ends both.
        let script = format!(
            "trap '' TERM; sleep 60 & echo $! > {}; wait",
            marker.display()
        );
        let playing = output(&["sh", "-c", &script, "{file}"])
            .start(&audio)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marker.exists() || std::fs::read_to_string(&marker).unwrap().trim().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the command did not start its player"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let player: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let started = Instant::now();
        playing.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The player the shell started is gone too (its group was signalled).
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::path::Path::new(&format!("/proc/{player}")).exists()
            && !std::fs::read_to_string(format!("/proc/{player}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(
                Instant::now() < deadline,
                "the player the command started still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
