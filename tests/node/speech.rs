//! Speech for the loudspeakers with the real espeak-ng (Debian's; tests/run.sh installs it): a
//! Mandarin message becomes a WAV once and is served from the cache after, a text that looks like a
//! command-line option is spoken as text, and many requests for one message at once make one file.

use std::time::Duration;

use township_node::pa::speech::Speech;

#[tokio::test]
async fn mandarin_speech_is_made_once_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let speech = Speech::new(dir.path(), "cmn", 150);
    let text = "王宅村请注意：熟溪水位已达到红色预警，请沿河人员立即转移。";
    assert!(speech.cached(text).is_none());
    let first = speech
        .speak(text)
        .await
        .expect("espeak-ng (apt-get install espeak-ng)");
    let wav = std::fs::read(&first.path).unwrap();
    assert_eq!((&wav[..4], &wav[8..12]), (&b"RIFF"[..], &b"WAVE"[..]));
    // Mono 16-bit at espeak-ng's 22,050 Hz: a sentence of 28 characters is seconds, not silence.
    assert!(
        wav.len() > 22_050 * 2,
        "{} bytes is too short for the sentence",
        wav.len()
    );
    assert_eq!(first.sha256.len(), 64);
    let made = std::fs::metadata(&first.path).unwrap().modified().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = speech.speak(text).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        std::fs::metadata(&again.path).unwrap().modified().unwrap(),
        made,
        "served from the cache, not made again"
    );
    assert_eq!(speech.cached(text), Some(first));
}

#[tokio::test]
async fn option_looking_text_is_spoken_and_parallel_requests_make_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let speech = std::sync::Arc::new(Speech::new(dir.path(), "cmn", 150));
    let odd = speech.speak("--version 测试").await.unwrap();
    assert!(std::fs::metadata(&odd.path).unwrap().len() > 1000);
    let text = "测试广播，请勿惊慌。";
    let all = futures_util::future::join_all((0..6).map(|_| {
        let speech = speech.clone();
        async move { speech.speak(text).await.unwrap() }
    }))
    .await;
    assert!(all.windows(2).all(|w| w[0] == w[1]));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files.len(),
        2,
        "one file per message, nothing partial left: {files:?}"
    );
}
