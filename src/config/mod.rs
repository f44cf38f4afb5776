//! Configuration: compiled-in defaults → a TOML file → `WAAS__SECTION__KEY` environment
//! variables, parsed into typed settings and validated once, at start-up, with errors
//! that name the offending key.
//!
//! The types and the loading are here; `check` holds the validation (what
//! `check-config` and `serve` both run), `render` the redacted TOML `check-config`
//! prints.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::EventType;

mod check;
mod render;

/// The defaults every layer starts from; also what `waas serve` runs on by itself.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Everything waas is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener.
    pub server: ServerSettings,
    /// The durable store.
    pub storage: StorageSettings,
    /// Several instances on one Postgres database.
    pub cluster: ClusterSettings,
    /// Who may call `/v1`.
    pub auth: AuthSettings,
    /// Log output.
    pub log: LogSettings,
    /// Which puppet holds the WeChat session.
    pub puppet: PuppetSettings,
    /// Outbound message pacing.
    pub send: SendSettings,
    /// Links to inbound images and files, and their disk cache.
    pub media: MediaSettings,
    /// Where inbound events are pushed.
    #[serde(default)]
    pub webhooks: Vec<WebhookSettings>,
    /// Slack-style incoming webhooks: tools that post to Slack post into WeChat.
    #[serde(default)]
    pub incoming: Vec<IncomingSettings>,
    /// OneBot v11: the HTTP API, the WebSockets and the bots waas connects to.
    pub onebot: OneBotSettings,
    /// `[[accounts]]` as written (each read over the `[puppet]` defaults into
    /// [`Settings::accounts`]).
    #[serde(default, rename = "accounts", skip_serializing)]
    raw_accounts: Vec<serde_json::Value>,
    /// The WeChat accounts this waas holds: the `[[accounts]]`, or, without any, one
    /// named `default` whose puppet is the top-level `[puppet]`.
    #[serde(skip)]
    pub accounts: Vec<AccountSettings>,
    /// True when `accounts` is the implicit `default` of a configuration without
    /// `[[accounts]]` (a v0.1 file).
    #[serde(skip)]
    implicit_account: bool,
}

/// One WeChat account: its name and its puppet.
#[derive(Debug, Clone, Serialize)]
pub struct AccountSettings {
    /// Letters, digits, `-` and `_`; in URLs, metrics and every event's `account`.
    pub name: String,
    /// The same keys as `[puppet]`.
    pub puppet: PuppetSettings,
}

/// The name of the account a configuration without `[[accounts]]` has.
pub const DEFAULT_ACCOUNT: &str = "default";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Non-loopback addresses need `auth` configured.
    pub listen: SocketAddr,
    /// Base URL users reach waas at; used to build absolute links (the QR code URL).
    pub public_url: String,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit: ByteSize,
    /// Longest any API request may take before it is answered with an error.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection must send a complete request head within this long (slow or
    /// half-open clients are closed).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no traffic for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; past it new ones are closed with a warning.
    pub max_connections: usize,
    /// Most event streams and long polls open at once, across all clients (429 past it).
    pub max_streams: usize,
    /// Most event streams and long polls open at once with one credential (429 past it).
    pub max_streams_per_credential: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `sqlite://PATH` (created on first start).
    pub url: String,
    /// Delivered events, their attempts and finished sends older than this are pruned.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// SQLite `synchronous`: `full` (survives power loss) or `normal` (survives a crash
    /// of the process, not of the machine).
    pub synchronous: Synchronous,
    /// Postgres: connections in this instance's pool.
    pub max_connections: u32,
    /// Postgres: the longest one statement may run before the database cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

/// Several instances sharing one Postgres database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This instance's name in `GET /v1/cluster` and on what it claims; unique among
    /// the instances. Default: the host's name and the process id.
    #[serde(default)]
    pub instance: Option<String>,
    /// How long an account's lease (and an instance's heartbeat) lasts without renewal;
    /// renewed at a third of it. A holder that dies is replaced after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Bearer tokens accepted on `/v1`: a value, `env:NAME` or `file:PATH`; or
    /// `{ value = …, accounts = ["sales"] }` for a token of those accounts only.
    pub tokens: Vec<ScopedSecret>,
    /// Standard Webhooks secrets (`whsec_…`) accepted on signed POSTs, scoped the same
    /// way.
    pub signing_secrets: Vec<ScopedSecret>,
    /// Bearer token for `GET /metrics`; unset, `/metrics` needs no credential.
    #[serde(default)]
    pub metrics_token: Option<SecretValue>,
}

impl AuthSettings {
    /// True when some credential is configured, so the API is not open.
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || !self.signing_secrets.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `waas=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PuppetSettings {
    /// `mock` (embedded, simulated account) or `service` (Wechaty Puppet Service).
    pub kind: PuppetKind,
    /// Never relay the bot's own messages.
    pub skip_self: bool,
    /// Drop messages older than this (puppets replay history at login).
    #[serde(with = "humantime_serde")]
    pub skip_older_than: Duration,
    /// The simulated account.
    pub mock: MockSettings,
    /// The gRPC Puppet Service peer.
    pub service: ServiceSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PuppetKind {
    Mock,
    Service,
}

impl PuppetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PuppetKind::Mock => "mock",
            PuppetKind::Service => "service",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockSettings {
    /// Log in right after the scan event; `false` waits for `POST /v1/mock/scan`.
    pub auto_login: bool,
    /// The bot's own account.
    pub bot: MockContact,
    /// The bot's contacts.
    pub contacts: Vec<MockContact>,
    /// The rooms the bot is in.
    pub rooms: Vec<MockRoom>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockContact {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockRoom {
    pub id: String,
    pub topic: String,
    /// Contact ids of the members, the bot included.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// `host:port` of the puppet-service gateway.
    pub endpoint: String,
    /// The gateway's token: a value, `env:NAME` or `file:PATH`.
    pub token: SecretValue,
    /// Use TLS to reach the gateway.
    pub tls: bool,
    /// PEM file of the CA that signed the gateway's certificate.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Server name to verify in the gateway's certificate.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Reconnect backoff.
    pub reconnect: ReconnectSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectSettings {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendSettings {
    /// Least time between two sends into one conversation once `burst` is used up;
    /// `0s` turns pacing off. Pacing queues, it never drops.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Sends allowed into one conversation at once before pacing starts.
    pub burst: u32,
    /// Let send content (`file.url`, `link.thumbnail_url`) point at loopback and private
    /// addresses. Off by default: a caller must not make the gateway fetch from inside
    /// your network.
    pub allow_private_urls: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// How long a `data.media.url` link works; the link key rotates at this period.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// Disk space the media cache may use (least recently used goes first).
    pub cache_size: ByteSize,
    /// The cache folder; default: `media-cache` next to the SQLite database.
    #[serde(default)]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Largest file a multipart upload to `POST /v1/messages` may carry.
    pub max_upload: ByteSize,
}

impl Settings {
    /// Where downloaded media is kept: `media.cache_dir`, else `media-cache` next to
    /// the SQLite database.
    pub fn media_cache_dir(&self) -> std::path::PathBuf {
        match &self.media.cache_dir {
            Some(dir) => dir.clone(),
            None => self.data_dir().join("media-cache"),
        }
    }

    /// Where uploaded files wait to be sent: `uploads` next to the SQLite database.
    pub fn upload_dir(&self) -> std::path::PathBuf {
        self.data_dir().join("uploads")
    }

    /// The folder of the SQLite database (`data` with Postgres).
    fn data_dir(&self) -> std::path::PathBuf {
        if is_postgres_url(&self.storage.url) {
            return std::path::PathBuf::from("data");
        }
        let path = self
            .storage
            .url
            .strip_prefix("sqlite://")
            .unwrap_or(&self.storage.url);
        let path = path.split('?').next().unwrap_or(path);
        std::path::Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    }
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Unique name, used in admin URLs and metrics.
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Standard Webhooks secret(s); several sign in parallel during a rotation.
    pub secret: OneOrMany<SecretValue>,
    /// Event types to send; empty means all.
    #[serde(default)]
    pub events: Vec<EventType>,
    /// Only events in these rooms (ids or topics).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Only events from these contacts (ids or names).
    #[serde(default)]
    pub contacts: Vec<String>,
    /// Only events of these accounts (names); empty means all.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Body format.
    #[serde(default)]
    pub format: WebhookFormat,
    /// How long one attempt may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Delays after each failed attempt; after the last one the delivery is dead.
    #[serde(default = "default_retry", with = "duration_list")]
    pub retry: Vec<Duration>,
    /// Disable the webhook when deliveries keep dying for this long: a delivery dies,
    /// and another dies this much later with no success in between (as Svix does).
    /// `0s` never disables automatically.
    #[serde(default = "default_disable_after", with = "humantime_serde")]
    pub disable_after: Duration,
    /// Concurrent requests to this URL.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `none`, or `conversation` for FIFO per chat.
    #[serde(default)]
    pub ordering: Ordering,
    /// `format = "slack"`: the token the Slack app calls `/slack/api` with
    /// (`xoxb-…`); it identifies the app and its account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<SecretValue>,
}

impl WebhookSettings {
    /// The account a Slack app acts on through the Web API: the one its `accounts`
    /// names, or the only (or `default`) account.
    pub fn slack_account<'a>(&'a self, accounts: &'a [AccountSettings]) -> Option<&'a str> {
        match self.accounts.as_slice() {
            [one] => Some(one),
            [] if accounts.len() == 1 => Some(&accounts[0].name),
            [] => accounts
                .iter()
                .find(|a| a.name == DEFAULT_ACCOUNT)
                .map(|a| a.name.as_str()),
            _ => None,
        }
    }
}

/// OneBot v11 mode: NoneBot2 and Koishi bots drive WeChat.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OneBotSettings {
    /// The Bearer token of the HTTP API and both WebSockets (and sent to reverse
    /// WebSocket bots). Without one, they answer only on a loopback listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<SecretValue>,
    /// How events carry `message`: segment `array`s or CQ-code `string`s.
    pub message_format: MessageFormat,
    /// How often a WebSocket bot gets a heartbeat meta event; `0s`: never.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Backoff between attempts to reach a reverse WebSocket bot.
    pub reconnect: ReconnectSettings,
    /// Bots waas connects to (the bot is the WebSocket server), reconnecting forever.
    #[serde(default)]
    pub reverse_ws: Vec<ReverseWsSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    #[default]
    Array,
    String,
}

/// A bot that waas connects to over a WebSocket (OneBot's "reverse WebSocket").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseWsSettings {
    /// The account this bot drives (may be left out when there is one, or a `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `ws://` or `wss://`, for NoneBot2 `ws://host:port/onebot/v11/ws`.
    pub url: String,
}

/// A Slack-style incoming webhook: `POST /slack/hooks/{token}` posts into one chat.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingSettings {
    /// Unique name, for logs.
    pub name: String,
    /// The secret part of the URL (at least 24 characters; `waas secret` makes one).
    pub token: SecretValue,
    /// The account that sends (may be left out when there is one, or a `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The chat: `{ room = "id" }`, `{ room_topic = "Ops" }`, `{ contact = "id" }` or
    /// `{ contact_name = "Alice" }`.
    pub to: crate::event::Recipient,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_retry() -> Vec<Duration> {
    [5, 30, 120, 600, 1800, 7200, 21600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

fn default_disable_after() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}

fn default_max_in_flight() -> usize {
    16
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Standard,
    Slack,
    /// OneBot v11 HTTP POST reporting (`X-Self-ID`, `X-Signature`, quick operations).
    Onebot,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Standard => "standard",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Onebot => "onebot",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    None,
    Conversation,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Conversation => "conversation",
        }
    }
}

/// A credential, for every account (a plain string) or for some
/// (`{ value = "…", accounts = ["sales"] }`).
#[derive(Debug, Clone, Serialize)]
pub struct ScopedSecret {
    pub value: SecretValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for ScopedSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(String),
            Scoped {
                value: String,
                accounts: Vec<String>,
            },
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Plain(value) => ScopedSecret {
                value: SecretValue::from(value),
                accounts: None,
            },
            Raw::Scoped { value, accounts } => ScopedSecret {
                value: SecretValue::from(value),
                accounts: Some(accounts),
            },
        })
    }
}

impl ScopedSecret {
    pub fn expose(&self) -> &str {
        self.value.expose()
    }

    fn resolve(&mut self) -> Result<(), String> {
        self.value.resolve()
    }
}

/// A single value or a list of them (`secret = "whsec_…"` or `secret = ["…", "…"]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// A secret as written in the config: a literal, `env:NAME` or `file:PATH`. It is
/// resolved once at load time and never printed (`Debug` and `Serialize` redact it).
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct SecretValue {
    source: String,
    resolved: Option<String>,
}

impl From<String> for SecretValue {
    fn from(source: String) -> Self {
        SecretValue {
            source,
            resolved: None,
        }
    }
}

impl SecretValue {
    /// The resolved value. Only valid after [`Settings::validate`].
    pub fn expose(&self) -> &str {
        self.resolved.as_deref().unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    fn resolve(&mut self) -> Result<(), String> {
        let value = if let Some(name) = self.source.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
        } else if let Some(path) = self.source.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path}: {e}"))?
                .trim()
                .to_string()
        } else {
            self.source.clone()
        };
        self.resolved = Some(value);
        Ok(())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl SecretValue {
    /// What may be shown: where the secret comes from, never the secret itself.
    fn redacted(&self) -> String {
        if self.source.is_empty() {
            String::new()
        } else if self.source.starts_with("env:") || self.source.starts_with("file:") {
            format!("{} (redacted)", self.source)
        } else {
            "(redacted)".to_string()
        }
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A size such as `1MiB`, `512KB` or `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 1MiB or 512KB"))?;
        let factor = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, KB, MB)"
                ));
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }
}

/// Lays `over` onto `base`, table by table (values of `over` win).
fn merge_json(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(k) {
                    Some(existing) => merge_json(existing, v),
                    None => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// Several problems, one per line.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

/// What the `config` crate says about a bad file, made readable and safe to log: key
/// paths as `webhooks[0].url` (it writes `webhooks[0]url`), an example of a valid
/// duration, and never the offending line (it may hold a secret).
fn load_error(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    let mut out = String::new();
    for line in text.lines() {
        // TOML parse errors quote the source line (`3 | tokens = ["…"]`) and point at
        // it (`  |     ^`): drop both.
        let t = line.trim_start();
        let quoted = t.starts_with('|')
            || t.split_once('|').is_some_and(|(n, _)| {
                !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit())
            });
        if quoted || t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    let mut fixed = String::with_capacity(out.len());
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        fixed.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_')
        {
            fixed.push('.');
        }
    }
    if fixed.contains("expected a duration")
        || fixed.contains("duration") && fixed.contains("invalid type")
    {
        fixed.push_str(" (write a duration like \"15s\", \"500ms\" or \"2m\")");
    }
    ConfigError::Load(fixed)
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Settings {
    /// Loads defaults, then `file` (if any), then `WAAS__…` environment variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests pass their own).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        let mut user = Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
            user = user.add_source(File::from(path).format(FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("WAAS__"))
            .collect();
        let environment = Environment::with_prefix("WAAS")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env));
        builder = builder.add_source(environment.clone());
        user = user.add_source(environment);
        Self::from_layers(builder, user)
    }

    /// Parses a TOML document layered over the defaults (no file, no environment).
    pub fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        use config::{Config, File, FileFormat};
        Self::from_layers(
            Config::builder()
                .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
                .add_source(File::from_str(toml, FileFormat::Toml)),
            Config::builder().add_source(File::from_str(toml, FileFormat::Toml)),
        )
    }

    /// `all` is every layer; `user` the same without the compiled-in defaults, to tell
    /// a `[puppet]` the user wrote from the default one.
    fn from_layers(
        all: config::ConfigBuilder<config::builder::DefaultState>,
        user: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let raw = all.build().map_err(load_error)?;
        let user_wrote_puppet = user
            .build()
            .map_err(load_error)?
            .get_table("puppet")
            .is_ok();
        let mut settings: Settings = raw.try_deserialize().map_err(load_error)?;
        settings.read_accounts(user_wrote_puppet)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Turns `[[accounts]]` into [`Settings::accounts`], each puppet read over the
    /// defaults of `[puppet]`; without any, the top-level `[puppet]` is the account
    /// `default`.
    fn read_accounts(&mut self, user_wrote_puppet: bool) -> Result<(), ConfigError> {
        if self.raw_accounts.is_empty() {
            self.implicit_account = true;
            self.accounts = vec![AccountSettings {
                name: DEFAULT_ACCOUNT.to_string(),
                puppet: self.puppet.clone(),
            }];
            return Ok(());
        }
        if user_wrote_puppet {
            return Err(invalid(
                "puppet",
                "with [[accounts]], each account has its own [accounts.puppet]; move the top-level [puppet] into the account it belongs to",
            ));
        }
        let defaults = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.get::<serde_json::Value>("puppet"))
            .map_err(load_error)?;
        let mut accounts = Vec::new();
        let mut problems = Vec::new();
        for (i, raw) in std::mem::take(&mut self.raw_accounts)
            .into_iter()
            .enumerate()
        {
            let key = |field: &str| format!("accounts[{i}].{field}");
            let Some(table) = raw.as_object() else {
                problems.push(invalid(key("name"), "each [[accounts]] entry is a table"));
                continue;
            };
            if let Some(other) = table.keys().find(|k| *k != "name" && *k != "puppet") {
                problems.push(invalid(
                    key(other),
                    "unknown key; an account has `name` and `[accounts.puppet]`",
                ));
            }
            let name = table
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            if name.is_empty() {
                problems.push(invalid(
                    key("name"),
                    "every account needs a name (letters, digits, `-`, `_`), like \"sales\"",
                ));
            }
            let mut puppet = defaults.clone();
            if let Some(given) = table.get("puppet") {
                merge_json(&mut puppet, given);
            }
            match serde_json::from_value::<PuppetSettings>(puppet) {
                Ok(puppet) => accounts.push(AccountSettings {
                    name: name.to_string(),
                    puppet,
                }),
                Err(e) => problems.push(invalid(key("puppet"), e.to_string())),
            }
        }
        match problems.len() {
            0 => {
                self.accounts = accounts;
                Ok(())
            }
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Many(problems)),
        }
    }

    /// Whether the accounts are the implicit `default` of a file without `[[accounts]]`.
    pub fn has_implicit_account(&self) -> bool {
        self.implicit_account
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A `storage.url` fit to be shown: a postgres URL without its password.
pub fn redact_any(url: &str) -> String {
    if is_postgres_url(url) {
        redact(url)
    } else {
        url.to_string()
    }
}

/// `url` with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(an unparsable postgres URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_listen_on_loopback() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:3010");
        assert_eq!(s.server.body_limit.0, 1 << 20);
        assert_eq!(s.puppet.kind, PuppetKind::Mock);
        assert_eq!(s.puppet.mock.contacts.len(), 3);
        assert!(s.webhooks.is_empty());
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let env = vec![
            (
                "WAAS__SERVER__LISTEN".to_string(),
                "127.0.0.1:4000".to_string(),
            ),
            ("WAAS__SEND__BURST".to_string(), "9".to_string()),
        ];
        let s = Settings::load_with_env(None, env).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(s.send.burst, 9);
    }

    #[test]
    fn slack_webhooks_and_incoming_hooks_are_checked() {
        let hook = |extra: &str| {
            Settings::from_toml(&format!(
                "[[webhooks]]\nname = \"bolt\"\nurl = \"http://127.0.0.1:3000/slack/events\"\nformat = \"slack\"\nsecret = \"0123456789abcdef\"\n{extra}"
            ))
        };
        let ok = hook("bot_token = \"xoxb-0123456789-abcdefghijk\"\n").unwrap();
        assert_eq!(ok.webhooks[0].slack_account(&ok.accounts), Some("default"));
        let err = hook("").unwrap_err().to_string();
        assert!(
            err.contains("webhooks[0].bot_token") && err.contains("xoxb-"),
            "{err}"
        );
        let err = hook("bot_token = \"not-a-bot-token-0123456789\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with `xoxb-`"), "{err}");
        let err = hook("bot_token = \"xoxb-0123456789-abcdefghijk\"\nevents = [\"login\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("webhooks[0].events"), "{err}");
        let err = Settings::from_toml(
            "[[incoming]]\nname = \"alerts\"\ntoken = \"short\"\nto = { room_topic = \"Ops\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("incoming[0].token"), "{err}");
    }

    #[test]
    fn onebot_settings_are_checked() {
        let ok = Settings::from_toml(
            "[onebot]\naccess_token = \"0123456789abcdef\"\nmessage_format = \"string\"\n\
             [[onebot.reverse_ws]]\nurl = \"ws://127.0.0.1:8080/onebot/v11/ws\"\n",
        )
        .unwrap();
        assert_eq!(ok.onebot.message_format, MessageFormat::String);
        assert_eq!(
            ok.onebot.access_token.as_ref().map(|t| t.expose()),
            Some("0123456789abcdef")
        );
        let err = |toml: &str| Settings::from_toml(toml).unwrap_err().to_string();
        let e = err("[onebot]\naccess_token = \"short\"\n");
        assert!(e.contains("onebot.access_token") && e.contains("16"), "{e}");
        let e = err("[[onebot.reverse_ws]]\nurl = \"http://127.0.0.1:8080/\"\n");
        assert!(
            e.contains("onebot.reverse_ws[0].url") && e.contains("ws://"),
            "{e}"
        );
        let e = err("[[onebot.reverse_ws]]\nurl = \"ws://127.0.0.1:8080/\"\naccount = \"nope\"\n");
        assert!(e.contains("onebot.reverse_ws[0].account"), "{e}");
        let e = err("[onebot]\nmessage_format = \"xml\"\n");
        assert!(e.contains("message_format"), "{e}");
        let e = err(
            "[[webhooks]]\nname = \"nb\"\nurl = \"http://127.0.0.1:8080/onebot/v11/\"\nformat = \"onebot\"\nsecret = \"short\"\n",
        );
        assert!(
            e.contains("webhooks[0].secret[0]") && e.contains("OneBot"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = Settings::from_toml(
            "[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"\nsecret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "webhooks[0].url: must be an http:// or https:// URL"
        );

        let err = Settings::from_toml(
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"nope\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("webhooks[0].secret[0]:"),
            "{err}"
        );

        let err = Settings::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");

        let err = Settings::from_toml("[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let s = Settings::from_toml(
            "[auth]\ntokens = [\"a-very-secret-token-value\"]\n[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n",
        )
        .unwrap();
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("a-very-secret-token-value"));
        assert!(!printed.contains("C2FVsBQIhrsc"));
        assert!(printed.contains("[[webhooks]]"));
        assert!(!format!("{s:?}").contains("a-very-secret"));
        assert_eq!(s.auth.tokens[0].expose(), "a-very-secret-token-value");
    }

    #[test]
    fn the_service_puppet_needs_an_endpoint_and_a_token() {
        let service = |body: &str| {
            Settings::from_toml(&format!(
                "[puppet]\nkind = \"service\"\n[puppet.service]\n{body}"
            ))
        };
        let err = service("").unwrap_err().to_string();
        assert!(err.starts_with("puppet.service.token: "), "{err}");
        let err = service("endpoint = \"http://gw:8788\"\ntoken = \"t\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("puppet.service.endpoint: "), "{err}");
        assert!(err.contains("no scheme"), "{err}");
        let err = service("token = \"env:WAAS_TEST_SURELY_UNSET_TOKEN\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "puppet.service.token: environment variable WAAS_TEST_SURELY_UNSET_TOKEN is not set"
        );
        let err = service("token = \"t\"\ntls_server_name = \"gw\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("puppet.service.tls: "), "{err}");
        let err = service("token = \"t\"\ntls = true\ntls_ca = \"/nonexistent/ca.pem\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("puppet.service.tls_ca: cannot read"),
            "{err}"
        );
        let err = service("token = \"t\"\nreconnect = { initial = \"1m\", max = \"1s\" }")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("puppet.service.reconnect: "), "{err}");

        let ok =
            service("endpoint = \"gw.internal:8788\"\ntoken = \"puppet_secret_token\"").unwrap();
        assert_eq!(ok.puppet.kind, PuppetKind::Service);
        assert_eq!(ok.puppet.service.token.expose(), "puppet_secret_token");
        assert!(!ok.to_redacted_toml().contains("puppet_secret_token"));
    }

    #[test]
    fn accounts_are_read_over_the_puppet_defaults() {
        let s = Settings::from_toml("").unwrap();
        assert!(s.has_implicit_account());
        assert_eq!(s.accounts.len(), 1);
        assert_eq!(s.accounts[0].name, "default");

        let s = Settings::from_toml(
            "[[accounts]]\nname = \"sales\"\n[accounts.puppet.mock]\nbot = { id = \"bot-user\", name = \"Sales\" }\n\n[[accounts]]\nname = \"support\"\n[accounts.puppet]\nkind = \"service\"\n[accounts.puppet.service]\ntoken = \"support-token\"\n",
        )
        .unwrap();
        assert!(!s.has_implicit_account());
        assert_eq!(s.accounts.len(), 2);
        assert_eq!(s.accounts[0].puppet.mock.bot.name, "Sales");
        assert_eq!(s.accounts[0].puppet.mock.contacts.len(), 3, "defaults kept");
        assert_eq!(s.accounts[1].puppet.kind, PuppetKind::Service);
        assert_eq!(s.accounts[1].puppet.service.token.expose(), "support-token");
        let printed = s.to_redacted_toml();
        assert!(printed.contains("[[accounts]]") && !printed.contains("support-token"));
        assert!(
            Settings::from_toml(&printed.replace("(redacted)", "t")).is_ok(),
            "{printed}"
        );

        let err = Settings::from_toml("[puppet]\nkind = \"mock\"\n[[accounts]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("puppet: with [[accounts]]"), "{err}");
        let err = Settings::from_toml(
            "[[accounts]]\nname = \"a b\"\n[[accounts]]\nname = \"c\"\n[accounts.puppet]\nkind = \"service\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("accounts[0].name:"), "{err}");
        assert!(err.contains("accounts[1].puppet.service.token:"), "{err}");
        let err = Settings::from_toml(
            "[[webhooks]]\nname = \"w\"\nurl = \"http://x/\"\nsecret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\naccounts = [\"nope\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("webhooks[0].accounts:"), "{err}");
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("512KB".parse::<ByteSize>().unwrap().0, 512_000);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }
}
