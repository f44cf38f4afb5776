//! Assembly: opens the store, starts the puppet, dispatcher, sender and pruner, binds
//! the listener and serves the API until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::account::{Account, Accounts};
use crate::config::{AuthSettings, Settings};
use crate::event::now_millis;
use crate::outbox::Outbox;
use crate::relay::dispatcher::Dispatcher;
use crate::relay::lanes::Lanes;
use crate::relay::signing::SigningKey;
use crate::store::{Claimant, Notice, Store};

/// Everything a request handler may need.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    /// Every WeChat account, each with its puppet, session, ingest and sender.
    pub accounts: Accounts,
    pub dispatcher: Arc<Dispatcher>,
    pub lanes: Arc<Lanes>,
    /// Where work is written and its worker woken.
    pub outbox: Arc<Outbox>,
    /// Replays started by hand, with their progress.
    pub replays: crate::relay::replay::Replays,
    /// Stored events, broadcast to streams and long polls.
    pub feed: Arc<crate::feed::Feed>,
    /// How many streams and long polls may be open.
    pub listeners: Arc<crate::feed::Listeners>,
    /// Who may call the API; replaced on reload.
    auth: RwLock<Arc<Auth>>,
    /// Cancelled when shutdown begins, so long polls and streams end and the server
    /// can drain.
    pub stopping: CancellationToken,
    /// The address the listener is bound to.
    pub bound: SocketAddr,
    /// Signs short-lived links (the QR code for clients without headers); lives only
    /// in this process.
    pub link_key: [u8; 32],
    /// Signs and checks media links.
    pub links: Arc<crate::media::MediaLinks>,
    /// Downloaded media on disk.
    pub media_cache: Arc<crate::media::MediaCache>,
    /// What OneBot bodies are made with: the id map and the message format.
    pub onebot: crate::onebot::Context,
    /// This instance's name among those sharing the store (`cluster.instance`).
    pub instance: Arc<str>,
    /// When this instance started.
    pub started_at: crate::event::Millis,
    /// `server.public_url`'s host, lowercase (parsed once: open mode checks it on
    /// every request).
    pub public_host: Option<String>,
    /// How many accounts this instance runs, and should.
    pub share: Arc<crate::account::Share>,
}

/// A bearer token and the accounts it may act on (`None`: all).
pub struct Token {
    pub value: String,
    pub accounts: Option<Vec<String>>,
}

/// The credentials the API accepts, decoded once.
pub struct Auth {
    /// Bearer tokens.
    pub tokens: Vec<Token>,
    /// Keys for Standard Webhooks signed requests.
    pub signing_keys: Vec<SigningKey>,
    /// The accounts each of `signing_keys` may act on (`None`: all).
    pub signing_scopes: Vec<Option<Vec<String>>>,
    /// The bearer token `/metrics` requires, when one is configured.
    pub metrics_token: Option<String>,
}

impl Auth {
    fn new(settings: &AuthSettings) -> Auth {
        let keys: Vec<(SigningKey, Option<Vec<String>>)> = settings
            .signing_secrets
            .iter()
            .filter_map(|s| Some((SigningKey::parse(s.expose()).ok()?, s.accounts.clone())))
            .collect();
        Auth {
            tokens: settings
                .tokens
                .iter()
                .map(|t| Token {
                    value: t.expose().to_string(),
                    accounts: t.accounts.clone(),
                })
                .collect(),
            signing_keys: keys.iter().map(|(k, _)| k.clone()).collect(),
            signing_scopes: keys.into_iter().map(|(_, a)| a).collect(),
            metrics_token: settings
                .metrics_token
                .as_ref()
                .map(|t| t.expose().to_string()),
        }
    }

    /// False when the API is open (nothing configured).
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || !self.signing_keys.is_empty()
    }
}

impl App {
    /// The credentials in force now.
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies a re-read configuration (SIGHUP): webhooks, their filters and secrets,
    /// and the API credentials change at once; in-flight deliveries finish under the old
    /// settings. What needs a restart is named in a warning and left as it was.
    pub async fn reload(&self, new: Settings) -> anyhow::Result<()> {
        let old = &self.settings;
        let mut ignored = Vec::new();
        if new.server.listen != old.server.listen {
            ignored.push("server.listen");
        }
        if new.storage.url != old.storage.url {
            ignored.push("storage.url");
        }
        let puppets = |s: &Settings| {
            s.accounts
                .iter()
                .map(|a| (a.name.clone(), a.puppet.kind))
                .collect::<Vec<_>>()
        };
        if puppets(&new) != puppets(old) {
            ignored.push("accounts and their puppets");
        }
        let incoming = |s: &Settings| {
            s.incoming
                .iter()
                .map(|h| (h.name.clone(), h.token.expose().to_string()))
                .collect::<Vec<_>>()
        };
        if incoming(&new) != incoming(old) {
            ignored.push("incoming");
        }
        // The address that counts is the one bound at start (a new `listen` is ignored
        // until a restart), not the new file's.
        if !self.bound.ip().is_loopback() && !new.auth.is_configured() {
            anyhow::bail!(
                "the new configuration has no auth, and waas listens on {}, which is not \
                 loopback: keep auth.tokens or auth.signing_secrets configured",
                self.bound
            );
        }
        let stats = self.store.webhook_stats().await?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Auth::new(&new.auth));
        for account in self.accounts.iter() {
            account.ingest.set_routes(&new.webhooks);
        }
        self.dispatcher.reload(&new.webhooks, &stats, &self.lanes);
        if !ignored.is_empty() {
            tracing::warn!(keys = ?ignored, "these settings change only with a restart");
        }
        tracing::info!(webhooks = new.webhooks.len(), "configuration reloaded");
        Ok(())
    }
}

/// A built, bound, not yet running waas.
pub struct Application {
    app: Arc<App>,
    listener: TcpListener,
}

/// How long in-flight deliveries and sends may take to finish at shutdown; what is not
/// done by then stays in the store and goes out after the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listen = settings.server.listen;
        if !listen.ip().is_loopback() && !settings.auth.is_configured() {
            anyhow::bail!(
                "server.listen = {listen} is not a loopback address, and no auth.tokens or \
                 auth.signing_secrets are configured: anyone who can reach it could send as \
                 your bot. Configure auth (see `waas secret`) or listen on 127.0.0.1."
            );
        }
        crate::metrics::install();
        crate::server::raise_fd_limit();
        let store: Arc<dyn Store> =
            crate::store::open(&settings.storage)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the store at {}",
                        crate::store::postgres::redact_any(&settings.storage.url)
                    )
                })?;
        let lanes = Arc::new(Lanes::default());
        let stats = store.webhook_stats().await?;
        let wakers: HashMap<String, Arc<Notify>> = settings
            .accounts
            .iter()
            .map(|a| (a.name.clone(), Arc::new(Notify::new())))
            .collect();
        let instance: Arc<str> = settings
            .cluster
            .instance
            .clone()
            .unwrap_or_else(instance_name)
            .into();
        let claimant = Claimant::new(instance.clone(), crate::outbox::CLAIM_LEASE);
        let outbox = Arc::new(Outbox::new(
            store.clone(),
            lanes.clone(),
            wakers.clone(),
            claimant,
        ));
        let onebot = crate::onebot::Context {
            ids: Arc::new(crate::onebot::Ids::new(store.clone())),
            format: settings.onebot.message_format,
        };
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            outbox.clone(),
            &settings.webhooks,
            &stats,
            &lanes,
            settings.send.allow_private_urls,
            onebot.clone(),
        ));
        let master = store
            .key(
                crate::media::KEY_NAME,
                rand::random::<[u8; 32]>().to_vec(),
                crate::event::now_millis(),
            )
            .await
            .context("cannot read the media link key from the store")?;
        let links = Arc::new(crate::media::MediaLinks::new(
            master,
            settings.media.link_ttl,
            &settings.server.public_url,
        ));
        let media_cache = Arc::new(crate::media::MediaCache::new(
            settings.media_cache_dir(),
            settings.media.cache_size.0,
        ));
        let shared = crate::account::Shared {
            settings: &settings,
            store: store.clone(),
            outbox: outbox.clone(),
            links: links.clone(),
        };
        let mut list = Vec::new();
        for account in &settings.accounts {
            let wake = wakers.get(&account.name).cloned().unwrap_or_default();
            list.push(Arc::new(Account::build(account, &shared, wake)?));
        }
        let accounts = Accounts::new(list);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
        let bound = listener.local_addr().unwrap_or(listen);
        let listeners = Arc::new(crate::feed::Listeners::new(
            settings.server.max_streams,
            settings.server.max_streams_per_credential,
        ));
        Ok(Application {
            app: Arc::new(App {
                bound,
                link_key: rand::random(),
                links,
                media_cache,
                onebot,
                instance,
                started_at: now_millis(),
                public_host: reqwest::Url::parse(&settings.server.public_url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_ascii_lowercase)),
                share: Default::default(),
                stopping: CancellationToken::new(),
                auth: RwLock::new(Arc::new(Auth::new(&settings.auth))),
                settings,
                store,
                accounts,
                dispatcher,
                lanes,
                outbox,
                replays: Default::default(),
                feed: Default::default(),
                listeners,
            }),
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.app.settings.server.listen)
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops accepting, stops claiming, and
    /// gives in-flight work [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = self.app;
        let tracker = TaskTracker::new();
        let work = shutdown.child_token();

        // Alive first, so that nobody frees this instance's claims as a dead one's.
        if let Err(e) = app.store.heartbeat(&app.instance, app.started_at).await {
            tracing::warn!(error = %e, "cannot record this instance in the store");
        }
        if let Ok(instances) = app.store.instances().await {
            app.share.set_fair(app.accounts.len(), instances.len());
        }
        tracker.spawn(heartbeat_loop(app.clone(), work.clone()));
        if let Some(notices) = app.store.notices() {
            tracker.spawn(follow_notices(app.clone(), notices, work.clone()));
        }
        for account in app.accounts.iter() {
            account.spawn(
                &app.settings.cluster,
                app.instance.clone(),
                app.share.clone(),
                &tracker,
                &work,
            );
        }
        app.dispatcher.spawn(&tracker, work.clone());
        tracker.spawn(prune_loop(app.clone(), work.clone()));
        tracker.spawn(crate::metrics::upkeep(work.clone()));
        tracker.spawn(
            app.feed
                .clone()
                .run(app.store.clone(), app.outbox.last_seq(), work.clone()),
        );
        if !app.settings.onebot.reverse_ws.is_empty() {
            let hub = crate::api::onebot::hub(&app);
            for bot in &app.settings.onebot.reverse_ws {
                let account = bot
                    .account
                    .clone()
                    .or_else(|| app.accounts.unscoped().ok().map(|a| a.name.clone()))
                    .unwrap_or_default();
                tracker.spawn(crate::onebot::reverse::run(
                    hub.clone(),
                    account,
                    bot.url.clone(),
                ));
            }
        }

        let addr = self.listener.local_addr()?;
        announce(&app, addr);
        let router = crate::api::router(app.clone());
        let limits = crate::server::Limits::from_settings(&app.settings.server);
        let http = tokio::spawn(crate::server::serve(
            self.listener,
            router,
            limits,
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        // Long polls and streams end, so their connections can close.
        app.stopping.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, http).await {
            Ok(Ok(result)) => result.context("the HTTP server failed")?,
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server task failed"),
            Err(_) => {
                tracing::warn!("some connections were still open at the end of the grace period")
            }
        }

        work.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight work did not finish in time; it stays queued for the next start"
            );
        }
        tracing::info!("waas stopped");
        Ok(())
    }
}

/// This instance's name, as the owner of the work it claims: the host's name and the
/// process id.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}-{}", std::process::id())
}

/// The start-up banner: what runs, where, and what a newcomer should know first.
fn announce(app: &App, addr: SocketAddr) {
    let settings = &app.settings;
    let store = crate::store::sqlite_path(&settings.storage.url)
        .map(str::to_string)
        .unwrap_or_else(|| crate::store::postgres::redact_any(&settings.storage.url));
    let auth = app.auth();
    let access = if auth.is_configured() {
        format!(
            "{} token(s), {} signing secret(s)",
            auth.tokens.len(),
            auth.signing_keys.len()
        )
    } else {
        "open: no auth configured (loopback only)".to_string()
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        store = %store,
        instance = %app.instance,
        puppet = settings.puppet.kind.as_str(),
        accounts = app.accounts.len(),
        webhooks = settings.webhooks.len(),
        auth = %access,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "waas {} listening on http://{addr} (open it in a browser for the session and the QR code)",
        env!("CARGO_PKG_VERSION"),
    );
    if settings.webhooks.is_empty() {
        tracing::info!(
            "0 webhooks: events are stored and can be pulled (GET /v1/events) or streamed (waas tail), nothing is pushed; add [[webhooks]] to push them"
        );
    }
}

/// Removes uploads cut off before they were stored whole (`.part` files an hour old):
/// none was acknowledged, so none is waited for. Stored uploads are removed by their
/// send once it is over.
fn sweep_partial_uploads(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if old && path.extension().is_some_and(|e| e == "part") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed an upload that was cut off")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a cut-off upload")
                }
            }
        }
    }
}

/// Deletes what retention allows, at start and then hourly.
async fn prune_loop(app: Arc<App>, shutdown: CancellationToken) {
    let retention = app.settings.storage.retention;
    loop {
        let before = now_millis() - retention.as_millis() as i64;
        match app.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned events older than storage.retention"),
            Err(e) => tracing::error!(error = %e, "pruning failed"),
        }
        sweep_partial_uploads(&app.settings.upload_dir());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Tells the other instances this one is alive, at a third of `cluster.lease`, and frees
/// the work of those that stopped doing so for a whole lease.
async fn heartbeat_loop(app: Arc<App>, shutdown: CancellationToken) {
    let lease = app.settings.cluster.lease;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = app.store.heartbeat(&app.instance, app.started_at).await {
            tracing::warn!(error = %e, "cannot record this instance as alive");
            continue;
        }
        if let Ok(instances) = app.store.instances().await {
            app.share.set_fair(app.accounts.len(), instances.len());
        }
        match app.store.reap(lease).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(claims = n, "took over the work of an instance that stopped");
                wake_everyone(&app);
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for stopped instances"),
        }
    }
}

/// Acts on what other instances sharing the store did: new events wake streams and
/// long polls, queued sends wake the account's sender, freed work wakes every worker.
async fn follow_notices(
    app: Arc<App>,
    mut notices: tokio::sync::broadcast::Receiver<Notice>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let notice = tokio::select! {
            n = notices.recv() => n,
            _ = shutdown.cancelled() => return,
        };
        match notice {
            Ok(Notice::Event(seq)) => app.outbox.stored(seq),
            Ok(Notice::Send(account)) => {
                if let Some(account) = app.accounts.get(&account) {
                    account.sender.wake();
                }
            }
            Ok(Notice::Work) | Err(RecvError::Lagged(_)) => {
                wake_everyone(&app);
                if let Ok(seq) = app.store.last_seq().await {
                    app.outbox.stored(seq);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Every webhook's loop and every account's sender looks at the store again.
fn wake_everyone(app: &App) {
    app.lanes.wake_all();
    for account in app.accounts.iter() {
        account.sender.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_cut_off_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(7200);
        for name in ["up_a.part", "up_b.part", "up_c"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        for name in ["up_a.part", "up_c"] {
            let f = std::fs::File::options()
                .append(true)
                .open(dir.path().join(name))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        sweep_partial_uploads(dir.path());
        assert!(!dir.path().join("up_a.part").exists(), "old and cut off");
        assert!(
            dir.path().join("up_b.part").exists(),
            "maybe still arriving"
        );
        assert!(
            dir.path().join("up_c").exists(),
            "stored whole: its send removes it"
        );
    }
}
