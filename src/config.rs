//! Configuration: compiled-in defaults → a TOML file → `WAAS__SECTION__KEY` environment
//! variables, parsed into typed settings and validated once, at start-up, with errors
//! that name the offending key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::EventType;
use crate::relay::signing::SigningKey;

/// The defaults every layer starts from; also what `waas serve` runs on by itself.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything waas is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener.
    pub server: ServerSettings,
    /// The durable store.
    pub storage: StorageSettings,
    /// Who may call `/v1`.
    pub auth: AuthSettings,
    /// Log output.
    pub log: LogSettings,
    /// Which puppet holds the WeChat session.
    pub puppet: PuppetSettings,
    /// Outbound message pacing.
    pub send: SendSettings,
    /// Where inbound events are pushed.
    #[serde(default)]
    pub webhooks: Vec<WebhookSettings>,
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

fn check_service(service: &mut ServiceSettings, prefix: &str, problems: &mut Vec<ConfigError>) {
    let mut problem =
        |key: &str, reason: String| problems.push(invalid(format!("{prefix}.{key}"), reason));
    let endpoint = service.endpoint.trim();
    let authority_ok = !endpoint.is_empty()
        && !endpoint.contains("://")
        && endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !authority_ok {
        problem(
            "service.endpoint",
            format!(
                "`{endpoint}` is not HOST:PORT (for example 127.0.0.1:8788; no scheme, `tls` chooses it)"
            ),
        );
    }
    if service.token.is_empty() {
        problem(
            "service.token",
            "the puppet service needs its token (a value, env:NAME or file:PATH)".into(),
        );
    } else {
        match service.token.resolve() {
            Err(r) => problem("service.token", r),
            Ok(()) if service.token.expose().is_empty() => {
                problem("service.token", "is empty".into())
            }
            Ok(()) => {}
        }
    }
    if !service.tls && (service.tls_ca.is_some() || service.tls_server_name.is_some()) {
        problem(
            "service.tls",
            "`tls_ca` or `tls_server_name` is set but `tls = false`; set `tls = true` to use them"
                .into(),
        );
    }
    if let Some(ca) = &service.tls_ca
        && let Err(e) = std::fs::metadata(ca)
    {
        problem(
            "service.tls_ca",
            format!("cannot read {}: {e}", ca.display()),
        );
    }
    let reconnect = &service.reconnect;
    if reconnect.initial.is_zero()
        || reconnect.initial > reconnect.max
        || reconnect.max > MAX_DURATION
    {
        problem(
                "service.reconnect",
                "`initial` must be above zero and at most `max` (like { initial = \"500ms\", max = \"30s\" })".into(),
            );
    }
}

fn check_mock(mock: &MockSettings, prefix: &str, problems: &mut Vec<ConfigError>) {
    let mut problem =
        |key: String, reason: String| problems.push(invalid(format!("{prefix}.{key}"), reason));
    let mut ids = std::collections::HashSet::new();
    ids.insert(mock.bot.id.as_str());
    for (i, c) in mock.contacts.iter().enumerate() {
        if c.id.is_empty() || !ids.insert(c.id.as_str()) {
            problem(
                format!("mock.contacts[{i}].id"),
                "must be non-empty and unique".into(),
            );
        }
    }
    for (i, room) in mock.rooms.iter().enumerate() {
        if !room.id.contains('@') {
            problem(
                format!("mock.rooms[{i}].id"),
                "room ids contain `@` (like \"room1@chatroom\")".into(),
            );
        }
        if let Some(m) = room.members.iter().find(|m| !ids.contains(m.as_str())) {
            problem(
                format!("mock.rooms[{i}].members"),
                format!("`{m}` is not the bot or one of the mock's contacts"),
            );
        }
    }
}

/// One account's puppet; keys under `prefix` (`puppet`, `accounts[1].puppet`).
fn check_puppet(puppet: &mut PuppetSettings, prefix: &str, problems: &mut Vec<ConfigError>) {
    if puppet.kind == PuppetKind::Service {
        check_service(&mut puppet.service, prefix, problems);
    }
    check_mock(&puppet.mock, prefix, problems);
}

/// A name usable in URLs and metrics: letters, digits, `-`, `_`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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

/// The longest duration any setting takes; longer ones overflow time arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A `tracing` filter in which every bare word is a level: `verbose` would be read as
/// a target name and silence every log line.
fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=');
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level: use trace, debug, info, warn, error or off, or a filter like \"waas=debug,info\""
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("not a filter: {e} (like \"info\" or \"waas=debug,info\")"))
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

    /// Checks what serde cannot: cross-field rules, secret formats, URLs, and resolves
    /// `env:`/`file:` secrets.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.check(&mut problems);
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Many(problems)),
        }
    }

    /// Every rule, each broken one noted (not only the first).
    fn check(&mut self, problems: &mut Vec<ConfigError>) {
        let mut problem = |key: &str, reason: String| problems.push(invalid(key, reason));
        if !self.server.public_url.starts_with("http://")
            && !self.server.public_url.starts_with("https://")
        {
            problem(
                "server.public_url",
                "must start with http:// or https:// (like \"http://127.0.0.1:3010\")".into(),
            );
        }
        if self.server.body_limit.0 < 1024 {
            problem(
                "server.body_limit",
                "must be at least 1KiB (like \"1MiB\")".into(),
            );
        }
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                problem(key, "must be between 1s and 30 days (like \"30s\")".into());
            }
        }
        for (key, value) in [
            ("server.max_connections", self.server.max_connections),
            ("server.max_streams", self.server.max_streams),
            (
                "server.max_streams_per_credential",
                self.server.max_streams_per_credential,
            ),
        ] {
            if value == 0 || value > 1_000_000 {
                problem(key, "must be between 1 and 1000000".into());
            }
        }
        if crate::store::sqlite_path(&self.storage.url).is_none() {
            problem(
                "storage.url",
                format!(
                    "`{}` is not supported: use sqlite://PATH (like \"sqlite://data/waas.db\")",
                    self.storage.url
                ),
            );
        }
        if let Err(why) = check_log_level(&self.log.level) {
            problem("log.level", why);
        }
        for (i, token) in self.auth.tokens.iter_mut().enumerate() {
            let key = format!("auth.tokens[{i}]");
            match token.resolve() {
                Err(r) => problem(&key, r),
                Ok(()) if token.expose().len() < 16 => problem(
                    &key,
                    "a token must be at least 16 characters (`waas secret` makes a good one)"
                        .into(),
                ),
                Ok(()) => {}
            }
        }
        if let Some(token) = &mut self.auth.metrics_token {
            match token.resolve() {
                Err(r) => problem("auth.metrics_token", r),
                Ok(()) if token.expose().len() < 16 => problem(
                    "auth.metrics_token",
                    "a token must be at least 16 characters".into(),
                ),
                Ok(()) => {}
            }
        }
        for (i, secret) in self.auth.signing_secrets.iter_mut().enumerate() {
            let key = format!("auth.signing_secrets[{i}]");
            match secret.resolve() {
                Err(r) => problem(&key, r),
                Ok(()) => {
                    if let Err(e) = SigningKey::parse(secret.expose()) {
                        problem(&key, e.to_string());
                    }
                }
            }
        }
        let names: Vec<String> = self.accounts.iter().map(|a| a.name.clone()).collect();
        for (field, list) in [
            ("auth.tokens", &self.auth.tokens),
            ("auth.signing_secrets", &self.auth.signing_secrets),
        ] {
            for (i, entry) in list.iter().enumerate() {
                match &entry.accounts {
                    Some(accounts) if accounts.is_empty() => problem(
                        &format!("{field}[{i}].accounts"),
                        "names no account; leave `accounts` out for every account".into(),
                    ),
                    Some(accounts) => {
                        if let Some(unknown) = accounts.iter().find(|a| !names.contains(a)) {
                            problem(
                                &format!("{field}[{i}].accounts"),
                                format!(
                                    "`{unknown}` is not an account (there are: {})",
                                    names.join(", ")
                                ),
                            );
                        }
                    }
                    None => {}
                }
            }
        }
        // The same refusal `serve` makes, so check-config passes only what serve runs.
        let listen = self.server.listen;
        if !listen.ip().is_loopback() && !self.auth.is_configured() {
            problem(
                "server.listen",
                format!(
                    "{listen} is not a loopback address and no auth.tokens or auth.signing_secrets are configured: anyone who can reach it could send as your bot (configure [auth], or listen on 127.0.0.1)"
                ),
            );
        }
        if self.implicit_account {
            check_puppet(&mut self.puppet, "puppet", problems);
            if let Some(account) = self.accounts.first_mut() {
                account.puppet = self.puppet.clone();
            }
        } else {
            let mut names = std::collections::HashSet::new();
            for (i, account) in self.accounts.iter_mut().enumerate() {
                let key = format!("accounts[{i}].name");
                if !valid_name(&account.name) {
                    problems.push(invalid(
                        &key,
                        "must be non-empty and use only letters, digits, `-` and `_` (like \"sales\")",
                    ));
                } else if !names.insert(account.name.clone()) {
                    problems.push(invalid(
                        &key,
                        format!("`{}` names two accounts", account.name),
                    ));
                }
                check_puppet(
                    &mut account.puppet,
                    &format!("accounts[{i}].puppet"),
                    problems,
                );
            }
        }
        let account_names: Vec<String> = self.accounts.iter().map(|a| a.name.clone()).collect();
        let mut problem = |key: &str, reason: String| problems.push(invalid(key, reason));
        if self.send.burst == 0 {
            problem("send.burst", "must be at least 1".into());
        }
        if self.send.min_interval > MAX_DURATION {
            problem(
                "send.min_interval",
                "must be at most 30 days (like \"1s\")".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        let listen = self.server.listen;
        for (i, hook) in self.webhooks.iter_mut().enumerate() {
            let at = |field: &str| format!("webhooks[{i}].{field}");
            if hook.name.is_empty()
                || !hook
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problem(
                    &at("name"),
                    "must be non-empty and use only letters, digits, `-` and `_` (like \"bot\")"
                        .into(),
                );
            } else if !names.insert(hook.name.clone()) {
                problem(
                    &at("name"),
                    format!("`{}` is used by two webhooks", hook.name),
                );
            }
            match reqwest::Url::parse(&hook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    if let Some(why) = crate::address::webhook_target_problem(&url, listen) {
                        problem(&at("url"), why);
                    }
                }
                Ok(_) => problem(&at("url"), "must be an http:// or https:// URL".into()),
                Err(e) => problem(
                    &at("url"),
                    format!("not a URL: {e} (like \"https://example.com/hook\")"),
                ),
            }
            if hook.secret.as_slice().is_empty() {
                problem(
                    &at("secret"),
                    "at least one secret is required (make one with `waas secret`)".into(),
                );
            }
            let mut secrets = hook.secret.as_slice().to_vec();
            for (j, secret) in secrets.iter_mut().enumerate() {
                let key = format!("webhooks[{i}].secret[{j}]");
                match secret.resolve() {
                    Err(r) => problem(&key, r),
                    Ok(()) => {
                        if let Err(e) = SigningKey::parse(secret.expose()) {
                            problem(&key, e.to_string());
                        }
                    }
                }
            }
            hook.secret = OneOrMany::Many(secrets);
            if hook.format != WebhookFormat::Standard {
                problem(
                    &at("format"),
                    "only `standard` is available in this build (slack is planned)".into(),
                );
            }
            if hook.events.contains(&EventType::WebhookTest) {
                problem(
                    &at("events"),
                    "`webhook.test` is sent by the test endpoint only".into(),
                );
            }
            if hook.timeout.is_zero() || hook.timeout > MAX_DURATION {
                problem(
                    &at("timeout"),
                    "must be between 1ms and 30 days (like \"15s\")".into(),
                );
            }
            if hook.retry.iter().any(|d| *d > MAX_DURATION) {
                problem(
                    &at("retry"),
                    "each step must be at most 30 days (like [\"5s\", \"1m\", \"1h\"])".into(),
                );
            }
            if hook.max_in_flight == 0 || hook.max_in_flight > 1024 {
                problem(&at("max_in_flight"), "must be between 1 and 1024".into());
            }
            if let Some(unknown) = hook.accounts.iter().find(|a| !account_names.contains(a)) {
                problem(
                    &at("accounts"),
                    format!(
                        "`{unknown}` is not an account (there are: {})",
                        account_names.join(", ")
                    ),
                );
            }
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        // serde_json first: toml cannot be produced by the `config` crate, and our
        // Serialize impls already redact secrets.
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if !self.implicit_account
            && let Some(root) = value.as_object_mut()
        {
            root.remove("puppet");
            root.insert(
                "accounts".into(),
                serde_json::to_value(&self.accounts).unwrap_or_default(),
            );
        }
        render_toml(&value)
    }
}

/// A small TOML writer for the shapes `Settings` serializes to (tables of scalars,
/// arrays and inline tables, and one array of tables for webhooks).
fn render_toml(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => "\"\"".into(),
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(scalar).collect::<Vec<_>>().join(", ")
                )
            }
            Value::Object(map) => format!(
                "{{ {} }}",
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k} = {}", scalar(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        }
    }
    fn table(out: &mut String, path: &str, map: &serde_json::Map<String, Value>, array: bool) {
        if array {
            out.push_str(&format!("\n[[{path}]]\n"));
        } else if !path.is_empty() {
            out.push_str(&format!("\n[{path}]\n"));
        }
        let mut nested = Vec::new();
        for (k, v) in map {
            match v {
                Value::Null => {}
                Value::Object(m) if k != "reconnect" && k != "bot" => nested.push((k, m)),
                _ => out.push_str(&format!("{k} = {}\n", scalar(v))),
            }
        }
        for (k, m) in nested {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            table(out, &p, m, false);
        }
    }
    let mut out = String::new();
    if let Value::Object(root) = value {
        for (k, v) in root {
            match v {
                Value::Object(m) => table(&mut out, k, m, false),
                Value::Array(items) => {
                    for item in items {
                        if let Value::Object(m) = item {
                            table(&mut out, k, m, true);
                        }
                    }
                }
                _ => out.push_str(&format!("{k} = {}\n", scalar(v))),
            }
        }
    }
    out.trim_start().to_string()
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
