//! Validation: every rule serde cannot express (cross-field rules, secret formats, URLs,
//! account names), each broken one reported with its key path and an example of a
//! valid value, all at once. `check-config` and `serve` run exactly these.

use std::time::Duration;

use super::*;
use crate::event::EventType;
use crate::relay::signing::SigningKey;

impl Settings {
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
        let postgres = super::is_postgres_url(&self.storage.url);
        if crate::store::sqlite_path(&self.storage.url).is_none() && !postgres {
            problem(
                "storage.url",
                format!(
                    "`{}` is not supported: use sqlite://PATH (like \"sqlite://data/waas.db\") \
                     or postgres://USER@HOST/DATABASE",
                    super::redact_any(&self.storage.url)
                ),
            );
        }
        if postgres && url::Url::parse(&self.storage.url).is_err() {
            problem(
                "storage.url",
                "is not a valid postgres:// URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
                    .into(),
            );
        }
        if !(1..=1000).contains(&self.storage.max_connections) {
            problem(
                "storage.max_connections",
                "must be between 1 and 1000".into(),
            );
        }
        if self.storage.statement_timeout < std::time::Duration::from_millis(100) {
            problem("storage.statement_timeout", "must be at least 100ms".into());
        }
        if self.cluster.lease < std::time::Duration::from_secs(1)
            || self.cluster.lease > std::time::Duration::from_secs(600)
        {
            problem("cluster.lease", "must be between 1s and 10m".into());
        }
        if let Some(name) = &self.cluster.instance
            && (name.is_empty()
                || name.len() > 200
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            problem(
                "cluster.instance",
                "must be 1 to 200 letters, digits, `-`, `_`, `.` or `:`".into(),
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
        if self.media.link_ttl < std::time::Duration::from_secs(60)
            || self.media.link_ttl > MAX_DURATION
        {
            problem(
                "media.link_ttl",
                "must be between 1 minute and 30 days (like \"24h\")".into(),
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
            let slack = hook.format == WebhookFormat::Slack;
            let onebot = hook.format == WebhookFormat::Onebot;
            let mut secrets = hook.secret.as_slice().to_vec();
            for (j, secret) in secrets.iter_mut().enumerate() {
                let key = format!("webhooks[{i}].secret[{j}]");
                match secret.resolve() {
                    Err(r) => problem(&key, r),
                    // A Slack app's signing secret is any string (Slack's are 32 hex
                    // characters).
                    // A OneBot secret is the bot's ONEBOT_SECRET, any string.
                    Ok(()) if onebot => {
                        if secret.expose().len() < 16 {
                            problem(
                                &key,
                                "a OneBot secret must be at least 16 characters (the bot's ONEBOT_SECRET; `waas secret` makes a good one)".into(),
                            );
                        }
                    }
                    Ok(()) if slack => {
                        if secret.expose().len() < 16 {
                            problem(
                                &key,
                                "a Slack signing secret must be at least 16 characters (the app's SLACK_SIGNING_SECRET; `waas secret` makes a good one)".into(),
                            );
                        }
                    }
                    Ok(()) => {
                        if let Err(e) = SigningKey::parse(secret.expose()) {
                            problem(&key, e.to_string());
                        }
                    }
                }
            }
            hook.secret = OneOrMany::Many(secrets);
            match (&mut hook.bot_token, slack) {
                (None, true) => problem(
                    &at("bot_token"),
                    "a slack webhook needs the token its app calls /slack/api with (bot_token = \"xoxb-…\", the app's SLACK_BOT_TOKEN)".into(),
                ),
                (Some(_), false) => problem(
                    &at("bot_token"),
                    "only `format = \"slack\"` webhooks take a bot_token".into(),
                ),
                (Some(token), true) => match token.resolve() {
                    Err(r) => problem(&at("bot_token"), r),
                    // Bolt tells the bot's own messages apart only for `xoxb-` tokens.
                    Ok(()) if !token.expose().starts_with("xoxb-") || token.expose().len() < 24 => {
                        problem(
                            &at("bot_token"),
                            "must start with `xoxb-` (Bolt recognises the bot's own messages only for bot tokens) and be at least 24 characters".into(),
                        )
                    }
                    Ok(()) => {}
                },
                (None, false) => {}
            }
            if slack {
                if hook.events.iter().any(|e| *e != EventType::Message) {
                    problem(
                        &at("events"),
                        "a slack webhook carries `message` events only (leave `events` out)".into(),
                    );
                }
                if hook.slack_account(&self.accounts).is_none() {
                    problem(
                        &at("accounts"),
                        "a slack webhook is one Slack app for one WeChat account: name it (accounts = [\"…\"])".into(),
                    );
                }
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
        let mut bot_tokens = std::collections::HashSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            if let Some(token) = &hook.bot_token
                && !token.expose().is_empty()
                && !bot_tokens.insert(token.expose().to_string())
            {
                problem(
                    &format!("webhooks[{i}].bot_token"),
                    "is used by two webhooks: each Slack app has its own".into(),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        let has_default = account_names.iter().any(|a| a == DEFAULT_ACCOUNT);
        for (i, hook) in self.incoming.iter_mut().enumerate() {
            let at = |field: &str| format!("incoming[{i}].{field}");
            if !valid_name(&hook.name) {
                problem(
                    &at("name"),
                    "must be non-empty and use only letters, digits, `-` and `_` (like \"alerts\")"
                        .into(),
                );
            } else if !names.insert(hook.name.clone()) {
                problem(
                    &at("name"),
                    format!("`{}` is used by two incoming webhooks", hook.name),
                );
            }
            match hook.token.resolve() {
                Err(r) => problem(&at("token"), r),
                Ok(()) => {
                    let token = hook.token.expose();
                    if token.len() < 24
                        || !token
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
                    {
                        problem(
                            &at("token"),
                            "must be at least 24 characters of letters, digits, `-`, `_`, `.` or `~` (it is part of the URL; `waas secret | tr -d '+/=' ` makes one)".into(),
                        );
                    } else if !tokens.insert(token.to_string()) {
                        problem(&at("token"), "is used by two incoming webhooks".into());
                    }
                }
            }
            if let Some(why) = account_problem(
                hook.account.as_deref(),
                &account_names,
                has_default,
                "posts",
            ) {
                problem(&at("account"), why);
            }
        }
        self.check_onebot(&account_names, has_default, &mut problem);
    }

    fn check_onebot(
        &mut self,
        account_names: &[String],
        has_default: bool,
        problem: &mut impl FnMut(&str, String),
    ) {
        let onebot = &mut self.onebot;
        if let Some(token) = &mut onebot.access_token {
            match token.resolve() {
                Err(r) => problem("onebot.access_token", r),
                Ok(()) if token.expose().len() < 16 => problem(
                    "onebot.access_token",
                    "must be at least 16 characters (the bot's ONEBOT_ACCESS_TOKEN; `waas secret` makes a good one)".into(),
                ),
                Ok(()) => {}
            }
        }
        if onebot.heartbeat > MAX_DURATION {
            problem(
                "onebot.heartbeat",
                "must be at most 30 days (like \"15s\"; \"0s\" sends none)".into(),
            );
        }
        if onebot.reconnect.initial.is_zero() || onebot.reconnect.initial > onebot.reconnect.max {
            problem(
                "onebot.reconnect",
                "`initial` must be above 0 and at most `max` (like { initial = \"1s\", max = \"30s\" })".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, bot) in onebot.reverse_ws.iter().enumerate() {
            let at = |field: &str| format!("onebot.reverse_ws[{i}].{field}");
            match url::Url::parse(&bot.url) {
                Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.has_host() => {}
                Ok(_) => problem(
                    &at("url"),
                    "must be a ws:// or wss:// URL (like \"ws://127.0.0.1:8080/onebot/v11/ws\")"
                        .into(),
                ),
                Err(e) => problem(&at("url"), format!("not a URL: {e}")),
            }
            if let Some(why) = account_problem(
                bot.account.as_deref(),
                account_names,
                has_default,
                "this bot drives",
            ) {
                problem(&at("account"), why);
            }
            let account = bot.account.clone().unwrap_or_default();
            if !seen.insert((account, bot.url.clone())) {
                problem(
                    &at("url"),
                    "this bot is listed twice for the same account".into(),
                );
            }
        }
    }
}

/// What is wrong with the `account` a hook or a bot names (`None` left out): not an
/// account, or left out where there are several and none is `default`. `role` says what
/// the account does for it ("posts").
fn account_problem(
    account: Option<&str>,
    names: &[String],
    has_default: bool,
    role: &str,
) -> Option<String> {
    match account {
        Some(a) if !names.iter().any(|n| n == a) => Some(format!(
            "`{a}` is not an account (there are: {})",
            names.join(", ")
        )),
        None if names.len() > 1 && !has_default => Some(format!(
            "there are several accounts and none is `default`: name the one that {role}"
        )),
        _ => None,
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
