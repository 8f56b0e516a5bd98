//! How `ivr cvip` prints: human text or `--json`, and progress bars.

use super::*;

pub(super) struct Out {
    pub(super) json: bool,
}

impl Out {
    pub(super) fn value(&self, v: &Value) {
        if self.json {
            println!("{}", to_json(v));
        } else {
            print_value(v, 0);
        }
    }

    pub(super) fn ok(&self, what: &str) {
        if self.json {
            println!("{}", json!({"ok": true, "done": what}));
        } else {
            println!("{what}");
        }
    }

    pub(super) fn rows(&self, rows: Vec<Struct>) {
        if self.json {
            println!("{}", Json::Array(rows.iter().map(|r| to_json(&Value::Struct(r.clone()))).collect()));
        } else if rows.is_empty() {
            println!("(none)");
        } else {
            for r in rows {
                let line: Vec<String> = r.iter().map(|(k, v)| format!("{k}={}", short(v))).collect();
                println!("{}", line.join("  "));
            }
        }
    }
}

pub(super) fn short(v: &Value) -> String {
    match v {
        Value::Base64(b) => format!("<{} bytes>", b.len()),
        Value::Struct(_) | Value::Array(_) => v.to_string(),
        v => v.to_text(),
    }
}

pub(super) fn print_value(v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Struct(s) => {
            for (k, v) in s.iter() {
                match v {
                    Value::Struct(_) | Value::Array(_) => {
                        println!("{pad}{k}:");
                        print_value(v, indent + 2);
                    }
                    v => println!("{pad}{k}: {}", short(v)),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::Struct(_) | Value::Array(_) => {
                        println!("{pad}[{i}]");
                        print_value(v, indent + 2);
                    }
                    v => println!("{pad}- {}", short(v)),
                }
            }
        }
        v => println!("{pad}{}", short(v)),
    }
}

pub(super) async fn connect(c: &Conn) -> anyhow::Result<(Client, tokio::sync::mpsc::Receiver<cvip::client::Pushed>)> {
    let host = c.host.as_deref().ok_or_else(|| anyhow!("--host is needed (or CVIP_HOST)"))?;
    let addr = if host.contains(':') && !host.starts_with('[') && host.matches(':').count() == 1 {
        host.to_string()
    } else {
        format!("{host}:{}", c.port)
    };
    let (mut client, ev) = Client::connect(&addr).await?;
    client.set_timeout(Duration::from_secs(c.timeout.max(1)));
    Ok((client, ev))
}

pub(super) fn bar(total: Option<u64>, what: &str, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let b = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}"
    };
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    b.enable_steady_tick(Duration::from_millis(200));
    b.set_message(what.to_string());
    b
}
