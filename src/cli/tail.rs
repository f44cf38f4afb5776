//! `waas tail`: live events from a running instance, one readable line each, from the
//! SSE stream; reconnects and resumes from the last event seen.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Base URL of the running waas (`http://` is assumed when no scheme is given).
    #[arg(long, default_value = "http://127.0.0.1:3010")]
    pub url: String,
    /// Bearer token (one of auth.tokens).
    #[arg(long, env = "WAAS_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Start after this seq (0: everything still stored). Default: only new events.
    #[arg(long)]
    pub after: Option<i64>,
    /// Only these event types, comma-separated (e.g. message,login).
    #[arg(long)]
    pub types: Option<String>,
    /// Print each event's full JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// One line for a person: `#seq time type  summary`.
pub fn summarize(event: &Value) -> String {
    let data = &event["data"];
    let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_string();
    let summary = match event["type"].as_str().unwrap_or("") {
        "message" => {
            let from = name(&data["from"]);
            let place = match data["room"]["topic"].as_str() {
                Some(topic) => format!("{from} @ {topic}"),
                None => from,
            };
            let kind = data["kind"].as_str().unwrap_or("text");
            let text = data["text"].as_str().unwrap_or("");
            if kind == "text" {
                format!("{place}: {text}")
            } else {
                format!("{place}: [{kind}] {text}")
            }
        }
        "login" | "logout" => format!(
            "{} ({})",
            name(&data["user"]),
            data["user"]["id"].as_str().unwrap_or("?")
        ),
        "scan" => format!(
            "QR code {}: {}",
            data["status"].as_str().unwrap_or("?"),
            data["payload"].as_str().unwrap_or("")
        ),
        _ => data.to_string(),
    };
    format!(
        "#{} {} {:<11} {summary}",
        event["seq"],
        event["timestamp"].as_str().unwrap_or(""),
        event["type"].as_str().unwrap_or("?")
    )
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let base = base_url(&args.url)?;
    let mut last: Option<i64> = args.after;
    if last.is_none() {
        last = Some(newest_seq(&client, &base, &args).await?);
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut url = format!("{base}/v1/events/stream");
        if let Some(types) = &args.types {
            url.push_str(&format!("?types={types}"));
        }
        let mut request = authed(client.get(&url), &args);
        if let Some(seq) = last {
            request = request.header("last-event-id", seq.to_string());
        }
        match request.send().await {
            Ok(resp) if resp.status() == 401 => return Err(unauthorized(&base, &args)),
            Ok(resp) if !resp.status().is_success() => {
                anyhow::bail!(
                    "{base} answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                )
            }
            Ok(mut resp) => {
                backoff = Duration::from_millis(500);
                let _ = writeln!(
                    std::io::stderr(),
                    "connected to {base}; waiting for {} (Ctrl-C to stop)",
                    match last {
                        Some(seq) if seq > 0 => format!("events after #{seq}"),
                        _ => "events".to_string(),
                    }
                );
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        let data: String = block
                            .lines()
                            .filter_map(|l| l.strip_prefix("data:"))
                            .map(str::trim_start)
                            .collect();
                        let Ok(event) = serde_json::from_str::<Value>(&data) else {
                            continue;
                        };
                        last = event["seq"].as_i64().or(last);
                        let line = if args.json {
                            event.to_string()
                        } else {
                            summarize(&event)
                        };
                        // A closed stdout (`waas tail | head`) ends the tail quietly.
                        if writeln!(std::io::stdout(), "{line}").is_err() {
                            return Ok(());
                        }
                    }
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "stream closed; reconnecting from #{}",
                    last.unwrap_or(0)
                );
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "cannot reach {base} ({e}); retrying in {backoff:?}"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The newest stored seq, by bisection over `GET /v1/events?after=N&limit=1` (a few
/// dozen small requests, whatever the store holds).
async fn newest_seq(client: &reqwest::Client, base: &str, args: &TailArgs) -> anyhow::Result<i64> {
    // The newest seq lies in [lo, hi]; `lo` is 0 or a stored seq.
    let (mut lo, mut hi) = (0i64, 1i64 << 53);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let page: Value = authed(
            client.get(format!("{base}/v1/events?after={mid}&limit=1")),
            args,
        )
        .send()
        .await
        .with_context(|| format!("cannot reach {base}: is waas running?"))?
        .error_for_status()
        .map_err(|e| refused(e, base, args))?
        .json()
        .await?;
        match page["events"][0]["seq"].as_i64() {
            Some(seq) => lo = seq,
            None => hi = mid,
        }
    }
    Ok(lo)
}

fn authed(request: reqwest::RequestBuilder, args: &TailArgs) -> reqwest::RequestBuilder {
    match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn refused(e: reqwest::Error, base: &str, args: &TailArgs) -> anyhow::Error {
    if e.status().is_some_and(|s| s == 401) {
        unauthorized(base, args)
    } else {
        anyhow::anyhow!("{base}: {e}")
    }
}

/// A 401, told apart: no token given, or the token given was refused.
fn unauthorized(base: &str, args: &TailArgs) -> anyhow::Error {
    match args.token {
        None => anyhow::anyhow!(
            "{base} needs a token and none was given: pass --token or set WAAS_API_TOKEN"
        ),
        Some(_) => {
            anyhow::anyhow!("{base} refused the token (401): check it is one of auth.tokens")
        }
    }
}

/// `127.0.0.1:3010` or `http://127.0.0.1:3010/` → `http://127.0.0.1:3010`.
fn base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        anyhow::anyhow!("--url {raw}: not a URL ({e}); give one like http://127.0.0.1:3010")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("--url {raw}: use http:// or https://");
    }
    Ok(with_scheme)
}
