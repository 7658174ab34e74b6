//! Speech synthesis time for `tests/bench/tts.sh`: distinct 100-character Mandarin messages through
//! the node's `Speech` (espeak-ng with its deadline, hashing and cache) and, side by side in the same
//! run, through the espeak-ng command alone writing the same WAVs, then the same messages again from
//! the cache.
//!
//! Usage: tts_time [messages]   (20 by default)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use township_node::pa::speech::Speech;

/// A warning-like message of exactly 100 characters, different for each `i`.
fn message(i: usize) -> String {
    let base = format!(
        "第{i}号预警：熟溪水位持续上涨，已超过警戒水位，王宅村、下杨村沿河低洼地带人员请立即转移到安全地带，注意收听广播，听从村干部和网格员指挥，不要靠近河道。"
    );
    let mut text: String = base.chars().cycle().take(100).collect();
    text.truncate(
        text.char_indices()
            .nth(100)
            .map_or(text.len(), |(at, _)| at),
    );
    text
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let speech = Speech::new(&dir.path().join("cache"), "cmn", 150);
    let (mut ours, mut plain, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0u64;
    for i in 0..n {
        let text = message(i);
        // Alternate which goes first, so a warm page cache favours neither.
        let run_plain = || {
            let out = dir.path().join(format!("plain-{i}.wav"));
            let started = Instant::now();
            let mut child = Command::new("espeak-ng")
                .args(["-v", "cmn", "-s", "150", "-w"])
                .arg(&out)
                .arg("--stdin")
                .stdin(Stdio::piped())
                .spawn()
                .expect("espeak-ng");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
            assert!(child.wait().expect("wait").success());
            started.elapsed().as_secs_f64() * 1000.0
        };
        if i % 2 == 0 {
            plain.push(run_plain());
        }
        let started = Instant::now();
        let spoken = speech.speak(&text).await.expect("speech");
        ours.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes += spoken.bytes;
        if i % 2 == 1 {
            plain.push(run_plain());
        }
        let started = Instant::now();
        speech.speak(&text).await.expect("cached speech");
        cached.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (o50, p50) = (percentile(&mut ours, 0.5), percentile(&mut plain, 0.5));
    println!(
        "{n} distinct 100-character Mandarin messages, voice cmn at 150 wpm ({} KB of WAV each on average):",
        bytes / n as u64 / 1024
    );
    println!(
        "  node (Speech::speak, cold): median {o50:.0} ms, p90 {:.0} ms per 100 characters",
        percentile(&mut ours, 0.9)
    );
    println!(
        "  espeak-ng alone, same texts: median {p50:.0} ms, p90 {:.0} ms",
        percentile(&mut plain, 0.9)
    );
    println!("  ratio node / espeak-ng alone: {:.2}", o50 / p50);
    println!(
        "  the same message again, from the cache (hash of the WAV included): median {:.2} ms",
        percentile(&mut cached, 0.5)
    );
}
