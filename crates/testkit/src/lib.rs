//! ffprobe and ffmpeg (Debian's) as the independent judges of the media
//! files ivr writes, shared by the test suites of every crate, and
//! PostgreSQL and NATS servers of their own ([`services`]) for the
//! cluster's tests and `ivr bench ivc --nodes`. Nothing but the tests and
//! the benches uses it.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Why a file was not judged good.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The tool is not installed (`scripts/test.sh` installs it).
    #[error("{tool} (apt-get install ffmpeg; scripts/test.sh does): {cause}")]
    Missing { tool: &'static str, cause: std::io::Error },
    /// The tool failed or complained about the file.
    #[error("{tool} {path}: {said}")]
    Complained { tool: &'static str, path: String, said: String },
    #[error("ffprobe {path}: not JSON: {cause}")]
    NotJson { path: String, cause: serde_json::Error },
}

/// `ffprobe -count_frames -show_entries ENTRIES -of json PATH`: the JSON,
/// or what ffprobe said when it failed or complained.
pub mod services;

/// Waits (up to 5 s, asking every 50 ms) until `f` says yes: what a test
/// expects to happen soon, without betting on how soon a loaded machine
/// gets there. Panics naming `what` when it does not.
pub async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

pub fn ffprobe(path: &Path, entries: &str) -> Result<Value, ProbeError> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-count_packets", "-show_entries", entries, "-of", "json"])
        .arg(path)
        .output()
        .map_err(|cause| ProbeError::Missing { tool: "ffprobe", cause })?;
    if !out.status.success() || !out.stderr.is_empty() {
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(ProbeError::Complained { tool: "ffprobe", path: path.display().to_string(), said });
    }
    serde_json::from_slice(&out.stdout).map_err(|cause| ProbeError::NotJson { path: path.display().to_string(), cause })
}

/// `ffmpeg -v error -i PATH -f null -`: Ok when every frame decodes
/// without a word.
pub fn decodes_cleanly(path: &Path) -> Result<(), ProbeError> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .map_err(|cause| ProbeError::Missing { tool: "ffmpeg", cause })?;
    if !out.status.success() || !out.stderr.is_empty() {
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(ProbeError::Complained { tool: "ffmpeg decoding", path: path.display().to_string(), said });
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
