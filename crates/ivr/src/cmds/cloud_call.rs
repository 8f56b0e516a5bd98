//! `ivr cloud call METHOD [PARAMS]`: one IVT method on many devices of a
//! running cloud, through its API (`POST /api/v1/rpc`, in batches): a
//! setting pushed to a site's cameras, a status read from a fleet. The
//! method and params are checked here first, so a typo fails before
//! anything is sent.

use anyhow::{bail, Context};
use ivr_rpc::catalogue::{IvtRequest, IVT_METHODS};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct CallArgs {
    /// The IVT method: GetNetConfig, SetRTMPPublishConfig, RebootChannel, …
    /// (every method of IVR RPC the cloud sends to a device).
    method: String,
    /// Its params as JSON, e.g. '{"channel": 0}' (none for methods
    /// without).
    params: Option<String>,
    /// The cloud's URL.
    #[arg(long, env = "IVR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A token with operator rights on the devices: an API token
    /// (`ivr_…`) or the admin token.
    #[arg(long, env = "IVR_TOKEN", hide_env_values = true)]
    token: String,
    /// Devices by login code (repeat the option, or separate with commas).
    #[arg(long = "device", value_delimiter = ',')]
    devices: Vec<String>,
    /// Login codes from a file, one a line (`-`: stdin; blank lines and
    /// lines starting with `#` are skipped).
    #[arg(long)]
    devices_from: Option<PathBuf>,
    /// Every device the token sees that is online now.
    #[arg(long)]
    all: bool,
    /// Calls per request (1 to 1000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch: u32,
    /// Trust only the certificates in this PEM file (an https:// cloud
    /// with its own CA; default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The results as one JSON object on stdout (`results`, `ok`,
    /// `failed`), no progress bar.
    #[arg(long)]
    json: bool,
}

/// What one request may take: the cloud answers a batch once its slowest
/// device has (25 s at most each).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The largest answer read (1,000 answers of a few KiB each fit easily).
const ANSWER_MAX: usize = 64 << 20;

struct Cloud {
    dialer: ivr_rpc::net::Dialer,
    base: String,
    auth: String,
}

impl Cloud {
    async fn ask(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Authorization", self.auth.as_str()), ("Content-Type", "application/json")];
        let (status, answer) = ivr_edge::upload::request(
            &self.dialer,
            method,
            &url,
            &headers,
            body.as_bytes(),
            ANSWER_MAX,
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if status != 200 {
            let why = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(&answer).into());
            bail!("{method} {url}: HTTP {status}: {why}");
        }
        Ok(v)
    }

    /// Every online device the token sees, a page at a time.
    async fn online(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/api/v1/devices?limit=10000{after}");
            let page = self.ask("GET", &path, None).await?;
            let page = page.as_array().context("the device list is not a JSON array")?;
            for d in page {
                if d["online"] == true {
                    out.extend(d["login_code"].as_str().map(str::to_owned));
                }
            }
            match page.last().and_then(|d| d["login_code"].as_str()) {
                Some(last) if page.len() == 10_000 => after = format!("&after={}", query_escape(last)),
                _ => return Ok(out),
            }
        }
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The login codes of `--devices-from`.
fn read_codes(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let lines: Vec<String> = if path.as_os_str() == "-" {
        std::io::stdin().lock().lines().collect::<Result<_, _>>().context("reading login codes from stdin")?
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("--devices-from {}", path.display()))?;
        std::io::BufReader::new(f)
            .lines()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", path.display()))?
    };
    Ok(lines.into_iter().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty() && !l.starts_with('#')).collect())
}

pub async fn run(a: CallArgs) -> anyhow::Result<()> {
    if !IVT_METHODS.contains(&a.method.as_str()) {
        bail!("{:?} is not an IVT method; one of {}", a.method, IVT_METHODS.join(", "));
    }
    let params: Option<Value> = match &a.params {
        Some(p) => Some(serde_json::from_str(p).with_context(|| format!("PARAMS {p:?} is not JSON"))?),
        None => None,
    };
    IvtRequest::parse(&a.method, params.as_ref()).map_err(|e| anyhow::anyhow!("{}: {e}", a.method))?;
    let base = a.url.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--url {:?}: expected http://host[:port] or https://…", a.url);
    }
    let cloud =
        Cloud { dialer: ivr_rpc::net::Dialer::new(None, a.ca_file.clone()), base, auth: format!("Bearer {}", a.token) };
    let mut codes = a.devices.iter().map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect::<Vec<_>>();
    if let Some(p) = &a.devices_from {
        codes.extend(read_codes(p)?);
    }
    if a.all {
        codes.extend(cloud.online().await?);
    }
    if codes.is_empty() {
        bail!(if a.all {
            "no device is online (of those the token sees)"
        } else {
            "name the devices: --device CODE, --devices-from FILE or --all"
        });
    }
    let calls: Vec<Value> = codes
        .iter()
        .map(|lc| match &params {
            Some(p) => json!({"device": lc, "method": a.method, "params": p}),
            None => json!({"device": lc, "method": a.method}),
        })
        .collect();
    let bar = super::bench_edge::bar(calls.len() as u64, &format!("{} on {} devices", a.method, calls.len()), a.json);
    let mut results = Vec::with_capacity(calls.len());
    for chunk in calls.chunks(a.batch as usize) {
        let answer = cloud.ask("POST", "/api/v1/rpc", Some(&json!({ "calls": chunk }))).await;
        let answer = match answer {
            Ok(v) => v,
            Err(e) => {
                bar.abandon();
                return Err(e.context(format!("after {} of {} calls", results.len(), calls.len())));
            }
        };
        match answer["results"].as_array() {
            Some(r) if r.len() == chunk.len() => results.extend(r.iter().cloned()),
            _ => bail!("the cloud's answer to a batch has no \"results\" for every call: {answer}"),
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let ok = results.iter().filter(|r| r["status"] == 200).count();
    let failed = results.len() - ok;
    if a.json {
        println!("{}", json!({"results": results, "ok": ok, "failed": failed}));
    } else {
        let width = codes.iter().map(|c| c.chars().count()).max().unwrap_or(0).min(40);
        for r in &results {
            let what = if r["status"] == 200 {
                r["answer"].to_string()
            } else {
                r["error"].as_str().unwrap_or_default().to_owned()
            };
            println!("{:<width$}  {}  {what}", r["device"].as_str().unwrap_or_default(), r["status"]);
        }
        println!("{ok} ok, {failed} failed");
    }
    if failed > 0 {
        bail!("{failed} of {} calls failed", results.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_codes_in_a_query_are_escaped() {
        assert_eq!(query_escape("cam 1/é"), "cam%201%2F%C3%A9");
    }

    #[test]
    fn codes_are_read_one_a_line_without_blanks_or_comments() {
        let p = std::env::temp_dir().join(format!("ivr-codes-{}", std::process::id()));
        std::fs::write(&p, "cam-1\n\n# the yard\n  cam-2  \n").unwrap();
        assert_eq!(read_codes(&p).unwrap(), ["cam-1", "cam-2"]);
        std::fs::remove_file(&p).unwrap();
        assert!(read_codes(&PathBuf::from("/nonexistent/codes")).unwrap_err().to_string().contains("--devices-from"));
    }
}
