//! Text to speech for the loudspeakers: espeak-ng as a subprocess (text on stdin, never on the
//! command line; a deadline; a length bound), the WAV cached under the data directory by a hash of
//! (text, voice, rate), so a message rendered ahead (a rule's template) plays at once and a text
//! spoken before is not synthesised again. At most two syntheses run at a time; the rest wait their
//! turn (two requests racing for one new text may both synthesise it; the cache keeps one file).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Most characters one spoken message may have (a long announcement is about 600).
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Longest a synthesis may take before it is killed.
const DEADLINE: Duration = Duration::from_secs(30);
/// Largest WAV accepted from the synthesiser (about 20 minutes of 22 kHz mono).
const MAX_WAV_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("the text is empty")]
    Empty,
    #[error("the text is longer than {MAX_TEXT_CHARS} characters")]
    TooLong,
    #[error("espeak-ng is not installed (apt-get install espeak-ng)")]
    NotInstalled,
    #[error("speech synthesis took longer than {}s and was stopped", DEADLINE.as_secs())]
    TimedOut,
    #[error("speech synthesis failed: {0}")]
    Failed(String),
    #[error("the speech cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SpeechError {
    /// Whether trying again later could help (a busy or broken synthesiser, not a bad text).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SpeechError::TimedOut | SpeechError::Failed(_) | SpeechError::Io { .. }
        )
    }
}

/// A synthesised message: the WAV file and its content hash (what speakers fetch and check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spoken {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// The synthesiser with its cache.
pub struct Speech {
    program: PathBuf,
    dir: PathBuf,
    voice: String,
    rate: u32,
    running: tokio::sync::Semaphore,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpeechError + '_ {
    move |source| SpeechError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Speech {
    /// `dir` holds the cache (made if missing); `program` is espeak-ng (found on PATH by default).
    pub fn new(dir: &Path, voice: &str, rate: u32) -> Speech {
        Speech::with_program(PathBuf::from("espeak-ng"), dir, voice, rate)
    }

    pub fn with_program(program: PathBuf, dir: &Path, voice: &str, rate: u32) -> Speech {
        Speech {
            program,
            dir: dir.to_path_buf(),
            voice: voice.to_string(),
            rate,
            running: tokio::sync::Semaphore::new(2),
        }
    }

    /// The cache key: the same text, voice and rate always give the same file.
    fn key(&self, text: &str) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            b"township-node speech v1\0".as_slice(),
            self.voice.as_bytes(),
            b"\0",
            self.rate.to_string().as_bytes(),
            b"\0",
            text.as_bytes(),
        ] {
            ctx.update(part);
        }
        hex::encode(ctx.finish())
    }

    /// The text as it is spoken and keyed: trimmed, bounded, control characters (which mean nothing
    /// spoken and could confuse the synthesiser's markup guesser) as spaces.
    fn normalise(text: &str) -> Result<String, SpeechError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SpeechError::Empty);
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(SpeechError::TooLong);
        }
        Ok(text
            .chars()
            .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
            .collect())
    }

    /// The cached speech for `text`, if it was synthesised before.
    pub fn cached(&self, text: &str) -> Option<Spoken> {
        let text = Speech::normalise(text).ok()?;
        let path = self.dir.join(format!("{}.wav", self.key(&text)));
        spoken(&path).ok()
    }

    /// Speech for `text`: from the cache, or synthesised now.
    pub async fn speak(&self, text: &str) -> Result<Spoken, SpeechError> {
        let text = Speech::normalise(text)?;
        let path = self.dir.join(format!("{}.wav", self.key(&text)));
        if let Ok(done) = spoken(&path) {
            return Ok(done);
        }
        let _turn = self
            .running
            .acquire()
            .await
            .map_err(|_| SpeechError::Failed("the synthesiser is shutting down".into()))?;
        // Someone else may have made it while this waited.
        if let Ok(done) = spoken(&path) {
            return Ok(done);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        // Unique per synthesis: two requests for one text may both be running.
        let partial = path.with_extension(format!("{}.partial", uuid::Uuid::new_v4().simple()));
        let mut child = tokio::process::Command::new(&self.program)
            .arg("-v")
            .arg(&self.voice)
            .arg("-s")
            .arg(self.rate.to_string())
            .arg("-w")
            .arg(&partial)
            .arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SpeechError::NotInstalled,
                _ => SpeechError::Failed(e.to_string()),
            })?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(text.as_bytes())
                    .await
                    .map_err(|e| SpeechError::Failed(e.to_string()))?;
                stdin
                    .shutdown()
                    .await
                    .map_err(|e| SpeechError::Failed(e.to_string()))?;
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| SpeechError::Failed(e.to_string()))
        };
        let output = match tokio::time::timeout(DEADLINE, run).await {
            Ok(result) => result,
            Err(_) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(SpeechError::TimedOut);
            }
        };
        let output = match output {
            Ok(o) => o,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&partial).await;
            let detail: String = String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(200)
                .collect();
            return Err(SpeechError::Failed(format!(
                "espeak-ng exited with {}: {}",
                output.status,
                detail.trim()
            )));
        }
        let made = match spoken(&partial) {
            Ok(made) => made,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(SpeechError::Failed(format!(
                    "espeak-ng wrote no usable WAV: {e}"
                )));
            }
        };
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io(&path))?;
        Ok(Spoken { path, ..made })
    }
}

/// A WAV file in the cache: RIFF/WAVE header, bounded size, with its hash.
fn spoken(path: &Path) -> std::io::Result<Spoken> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if meta.len() < 44 || meta.len() > MAX_WAV_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a WAV file of a sensible size",
        ));
    }
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; 12];
    file.read_exact(&mut header)?;
    if &header[..4] != b"RIFF" || &header[8..12] != b"WAVE" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a RIFF/WAVE file",
        ));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&header);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(Spoken {
        path: path.to_path_buf(),
        sha256: hex::encode(ctx.finish()),
        bytes: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_text_voice_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let a = Speech::new(dir.path(), "cmn", 150);
        let b = Speech::new(dir.path(), "cmn", 160);
        let c = Speech::new(dir.path(), "en", 150);
        assert_eq!(a.key("洪水"), a.key("洪水"));
        assert_ne!(a.key("洪水"), a.key("暴雨"));
        assert_ne!(a.key("洪水"), b.key("洪水"));
        assert_ne!(a.key("洪水"), c.key("洪水"));
    }

    #[tokio::test]
    async fn bad_texts_and_a_missing_synthesiser_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Speech::with_program(dir.path().join("no-such-espeak"), dir.path(), "cmn", 150);
        assert!(matches!(s.speak("   ").await, Err(SpeechError::Empty)));
        assert!(matches!(
            s.speak(&"字".repeat(MAX_TEXT_CHARS + 1)).await,
            Err(SpeechError::TooLong)
        ));
        let e = s.speak("洪水预警").await.unwrap_err();
        assert!(matches!(e, SpeechError::NotInstalled), "{e}");
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn a_synthesiser_that_writes_garbage_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-espeak");
        // Writes a non-WAV file where -w says, like a broken synthesiser.
        std::fs::write(
            &script,
            "#!/bin/sh\nwhile [ \"$1\" != \"-w\" ]; do shift; done\necho garbage > \"$2\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = dir.path().join("cache");
        let s = Speech::with_program(script, &cache, "cmn", 150);
        let e = s.speak("洪水预警").await.unwrap_err();
        assert!(matches!(e, SpeechError::Failed(_)), "{e}");
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            0,
            "no partial file left"
        );
    }
}
