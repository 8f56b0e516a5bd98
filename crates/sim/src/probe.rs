//! ffprobe and ffmpeg (Debian's) as the independent judges of the media
//! files ivr writes, shared by the test suites of every crate.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `ffprobe -count_frames -show_entries ENTRIES -of json PATH`: the JSON,
/// or what ffprobe said when it failed or complained.
pub fn ffprobe(path: &Path, entries: &str) -> Result<Value, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-count_packets", "-show_entries", entries, "-of", "json"])
        .arg(path)
        .output()
        .map_err(|e| format!("ffprobe (apt-get install ffmpeg; scripts/test.sh does): {e}"))?;
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!("ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ffprobe {}: not JSON: {e}", path.display()))
}

/// `ffmpeg -v error -i PATH -f null -`: Ok when every frame decodes
/// without a word.
pub fn decodes_cleanly(path: &Path) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!("ffmpeg decoding {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// The first stream's frames as ffprobe counts them (0 if it cannot say).
pub fn frames(path: &Path) -> u64 {
    ffprobe(path, "stream=nb_read_frames")
        .ok()
        .and_then(|j| j["streams"][0]["nb_read_frames"].as_str()?.parse().ok())
        .unwrap_or(0)
}
