//! Uploaded and browser-recorded audio: recognised by content (WAV, MP3, Ogg, WebM from
//! MediaRecorder), never by the name or type the client states, and measured by demultiplexing with
//! symphonia (no decoding, so a file cannot make the node do more work than reading it once).
//! Anything else, or anything that does not demultiplex into one audio track, is refused.

use std::io::Cursor;
use std::time::Duration;

use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Longest message accepted: a broadcast, not an album.
pub const MAX_DURATION: Duration = Duration::from_secs(15 * 60);
/// Packets read while measuring, at most (a 15-minute Opus stream at 20 ms is 45,000).
const MAX_PACKETS: usize = 200_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AudioError {
    #[error("not a WAV, MP3, Ogg or WebM audio file")]
    UnsupportedType,
    #[error("the audio could not be read: {0}")]
    Unreadable(String),
    #[error("the audio is longer than {} minutes", MAX_DURATION.as_secs() / 60)]
    TooLong,
    #[error("the audio has no length")]
    Empty,
}

/// The container, from the first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        Some("audio/wav")
    } else if bytes.starts_with(b"OggS") {
        Some("audio/ogg")
    } else if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("audio/webm")
    } else if bytes.starts_with(b"ID3")
        || (bytes.len() >= 2 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
    {
        Some("audio/mpeg")
    } else {
        None
    }
}

/// The type and length of an audio file.
///
/// symphonia's demuxers are not hardened against every hostile file (its Matroska reader
/// overflows on some garbage, found by the property test below), so a panic inside them is caught
/// and the file refused as unreadable rather than taking the request down.
pub fn probe(bytes: &[u8]) -> Result<(&'static str, Duration), AudioError> {
    let mime = sniff(bytes).ok_or(AudioError::UnsupportedType)?;
    std::panic::catch_unwind(|| measure(bytes, mime)).unwrap_or_else(|_| {
        Err(AudioError::Unreadable(
            "the file's structure is broken".into(),
        ))
    })
}

fn measure(bytes: &[u8], mime: &'static str) -> Result<(&'static str, Duration), AudioError> {
    let mut hint = Hint::new();
    hint.with_extension(match mime {
        "audio/wav" => "wav",
        "audio/ogg" => "ogg",
        "audio/webm" => "webm",
        _ => "mp3",
    });
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes.to_vec())),
        MediaSourceStreamOptions::default(),
    );
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unreadable(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or_else(|| AudioError::Unreadable("no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let seconds = |ts: u64| -> Option<f64> {
        if let Some(tb) = params.time_base {
            let t = tb.calc_time(ts);
            Some(t.seconds as f64 + t.frac)
        } else {
            params.sample_rate.map(|r| ts as f64 / f64::from(r))
        }
    };
    // The header's frame count when it has one (WAV, most MP3s with a Xing header); otherwise the
    // end of the last packet, found by reading packets without decoding them.
    let mut length = params.n_frames.and_then(|n| {
        let start = params.start_ts;
        seconds(n.saturating_add(start)).map(|s| s - seconds(start).unwrap_or(0.0))
    });
    if length.is_none_or(|s| s <= 0.0) {
        let mut end = 0u64;
        let mut packets = 0usize;
        loop {
            match format.next_packet() {
                Ok(p) => {
                    if p.track_id() == track_id {
                        end = end.max(p.ts().saturating_add(p.dur()));
                    }
                    packets += 1;
                    if packets > MAX_PACKETS {
                        return Err(AudioError::TooLong);
                    }
                }
                Err(symphonia::core::errors::Error::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    break;
                }
                Err(symphonia::core::errors::Error::ResetRequired) => break,
                Err(e) => {
                    if packets == 0 {
                        return Err(AudioError::Unreadable(e.to_string()));
                    }
                    break;
                }
            }
        }
        length = seconds(end);
    }
    let secs = length.unwrap_or(0.0);
    if !secs.is_finite() || secs <= 0.0 {
        return Err(AudioError::Empty);
    }
    let duration = Duration::from_secs_f64(secs.min(MAX_DURATION.as_secs_f64() + 1.0));
    if duration > MAX_DURATION {
        return Err(AudioError::TooLong);
    }
    Ok((mime, duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wav(seconds: u32) -> Vec<u8> {
        let rate = 8000u32;
        let data = rate * seconds * 2;
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        out.resize(out.len() + data as usize, 0);
        out
    }

    #[test]
    fn a_wav_is_measured_from_its_header() {
        let (mime, d) = probe(&wav(3)).unwrap();
        assert_eq!(mime, "audio/wav");
        assert_eq!(d.as_millis(), 3000);
    }

    #[test]
    fn other_files_are_refused_by_content() {
        assert_eq!(
            probe(b"%PDF-1.7 not audio"),
            Err(AudioError::UnsupportedType)
        );
        assert_eq!(probe(b""), Err(AudioError::UnsupportedType));
        // A WAV header claiming gigabytes of data that are not there.
        let mut lying = wav(1);
        lying.truncate(60);
        let _ = probe(&lying);
    }

    proptest! {
        #[test]
        fn garbage_behind_any_audio_magic_never_panics(
            magic in 0usize..4, tail in proptest::collection::vec(any::<u8>(), 0..2000)
        ) {
            let mut bytes = match magic {
                0 => b"RIFF\x00\x00\x00\x00WAVE".to_vec(),
                1 => b"OggS".to_vec(),
                2 => vec![0x1A, 0x45, 0xDF, 0xA3],
                _ => b"ID3".to_vec(),
            };
            bytes.extend_from_slice(&tail);
            let _ = probe(&bytes);
        }
    }
}
