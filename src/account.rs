//! An account: one WeChat login, and everything that exists once per login — its
//! puppet, its session, its ingest (events stored as the account's) and its sender
//! (the account's queued sends). `App` holds them in [`Accounts`]; nothing below the
//! API assumes there is only one. Each account's puppet starts, reconnects and fails on
//! its own: one dead gateway never delays another account's events or sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AccountSettings, DEFAULT_ACCOUNT, PuppetKind, PuppetSettings, Settings};
use crate::ingest::Ingest;
use crate::outbox::Outbox;
use crate::puppet::mock::MockPuppet;
use crate::puppet::service::ServicePuppet;
use crate::puppet::{Puppet, SessionHandle};
use crate::relay::sender::Sender;
use crate::store::Store;

pub struct Account {
    /// The account's name: in URLs, metrics and every event's `account`.
    pub name: String,
    pub settings: PuppetSettings,
    pub session: SessionHandle,
    pub puppet: Arc<dyn Puppet>,
    /// The mock puppet, when it is this account's puppet (for `/v1/mock`).
    pub mock: Option<Arc<MockPuppet>>,
    pub ingest: Arc<Ingest>,
    pub sender: Arc<Sender>,
    /// Which instance runs the puppet (this one's name while it holds the lease).
    holder: std::sync::Mutex<Option<String>>,
    /// Where the account's lease is kept.
    store: Arc<dyn Store>,
}

/// What an account is built from, shared by all of them.
pub struct Shared<'a> {
    pub settings: &'a Settings,
    pub store: Arc<dyn Store>,
    pub outbox: Arc<Outbox>,
    /// Signs media links in every account's events.
    pub links: Arc<crate::media::MediaLinks>,
}

impl Account {
    /// Builds an account (its puppet is not started yet). `wake` wakes its sender.
    pub fn build(
        account: &AccountSettings,
        shared: &Shared<'_>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Account> {
        let puppet_settings = &account.puppet;
        let session = SessionHandle::new(puppet_settings.kind);
        let (puppet, mock): (Arc<dyn Puppet>, Option<Arc<MockPuppet>>) = match puppet_settings.kind
        {
            PuppetKind::Mock => {
                let mock = Arc::new(MockPuppet::new(&puppet_settings.mock, session.clone()));
                (mock.clone(), Some(mock))
            }
            PuppetKind::Service => (
                Arc::new(
                    ServicePuppet::new(&account.name, &puppet_settings.service, session.clone())
                        .with_context(|| format!("account `{}`", account.name))?,
                ),
                None,
            ),
        };
        let ingest = Arc::new(Ingest::new(
            &account.name,
            shared.outbox.clone(),
            &shared.settings.webhooks,
            puppet_settings,
            shared.links.clone(),
        ));
        let sender = Arc::new(Sender::new(
            &account.name,
            shared.outbox.clone(),
            ingest.clone(),
            puppet.clone(),
            session.clone(),
            wake,
            &shared.settings.send,
        ));
        Ok(Account {
            name: account.name.clone(),
            settings: puppet_settings.clone(),
            session,
            puppet,
            mock,
            ingest,
            sender,
            holder: Default::default(),
            store: shared.store.clone(),
        })
    }

    /// Starts the account's puppet and sender on `tracker` while this instance holds
    /// the account's lease (a store one process owns grants it at once): the lease is
    /// renewed at a third of `lease`; when it is lost (another instance took it, or it
    /// could not be renewed before running out) the puppet and sender stop at once, and
    /// the lease is asked for again every second. At shutdown the lease is given back.
    ///
    /// Accounts spread over the instances sharing the store ([`Share`]): an instance
    /// holding its fair share asks for free leases only once per `lease` (those below
    /// their share take them first), and one holding more gives one account back every
    /// third of `lease` for another to take.
    pub fn spawn(
        self: &Arc<Self>,
        cluster: &crate::config::ClusterSettings,
        instance: Arc<str>,
        share: Arc<Share>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        tracker.spawn(self.clone().hold(
            instance,
            cluster.lease,
            share,
            tracker.clone(),
            shutdown.clone(),
        ));
    }

    async fn hold(
        self: Arc<Self>,
        instance: Arc<str>,
        lease: Duration,
        share: Arc<Share>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let store = self.store.clone();
        let renew = lease / 3;
        // The puppet and sender while they run, and until when the lease surely holds.
        let mut running: Option<CancellationToken> = None;
        let mut holds_until = Instant::now();
        // Not before then does this instance ask for the lease while it holds its share
        // (or after it gave this account away).
        let mut not_before = Instant::now();
        // When the other holder's lease runs out (the store's clock), if known.
        let mut expires_at: Option<crate::event::Millis> = None;
        loop {
            if running.is_none() && (share.full() || Instant::now() < not_before) {
                if Instant::now() >= not_before {
                    not_before = Instant::now() + lease;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1).min(not_before - Instant::now())) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            let asked = Instant::now();
            match store.acquire_lease(&self.name, &instance, lease).await {
                Ok(Some(epoch)) => {
                    holds_until = asked + lease;
                    *self.holder.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(instance.to_string());
                    if running.is_some() && self.ingest.epoch() != Some(epoch) {
                        // Lost and taken back between two renewals: start afresh.
                        self.stop(&mut running, &share, "the lease changed hands meanwhile");
                    }
                    if running.is_some() && share.give_one_back(renew) {
                        match store.release_lease(&self.name, &instance).await {
                            Ok(()) => {
                                self.stop(
                                    &mut running,
                                    &share,
                                    "given back for another instance to hold (this one holds more than its share)",
                                );
                                not_before = Instant::now() + 2 * lease;
                            }
                            Err(e) => {
                                tracing::warn!(account = %self.name, error = %e, "cannot give the account's lease back")
                            }
                        }
                    } else if running.is_none() {
                        share.held.fetch_add(1, AtomicOrdering::AcqRel);
                        self.ingest.set_epoch(epoch);
                        tracing::info!(account = %self.name, epoch, "this instance holds the account; starting its puppet and sender");
                        let token = shutdown.child_token();
                        tracker.spawn(self.puppet.clone().run(self.ingest.clone(), token.clone()));
                        tracker.spawn(self.sender.clone().run(tracker.clone(), token.clone()));
                        running = Some(token);
                    }
                }
                Ok(None) => {
                    self.stop(
                        &mut running,
                        &share,
                        "another instance holds the account now",
                    );
                    let lease = store
                        .leases()
                        .await
                        .ok()
                        .and_then(|all| all.into_iter().find(|l| l.name == self.name));
                    expires_at = lease.as_ref().map(|l| l.expires_at);
                    *self.holder.lock().unwrap_or_else(|e| e.into_inner()) =
                        lease.and_then(|l| l.holder);
                }
                Err(e) => {
                    tracing::warn!(account = %self.name, error = %e, "cannot renew the account's lease");
                    if running.is_some() && Instant::now() + renew / 2 >= holds_until {
                        self.stop(
                            &mut running,
                            &share,
                            "its lease could not be renewed in time",
                        );
                        *self.holder.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                }
            }
            // The holder renews at a third of the lease; the others ask again when the
            // holder's lease runs out, at least every second (the store's clock may
            // differ from this one's), so a dead holder is replaced right after.
            let wait = if running.is_some() {
                renew.min(holds_until.saturating_duration_since(Instant::now()) / 2)
            } else {
                let until_expiry = expires_at.map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(
                        (at - crate::event::now_millis() + 20).clamp(0, 1000) as u64
                    )
                });
                renew.min(Duration::from_secs(1)).min(until_expiry)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if running.is_some()
            && let Err(e) = store.release_lease(&self.name, &instance).await
        {
            tracing::warn!(account = %self.name, error = %e, "cannot give the account's lease back; another instance takes it when it runs out");
        }
    }

    /// Stops the puppet and sender, if they run here.
    fn stop(&self, running: &mut Option<CancellationToken>, share: &Share, why: &str) {
        if let Some(token) = running.take() {
            token.cancel();
            share.held.fetch_sub(1, AtomicOrdering::AcqRel);
            tracing::warn!(account = %self.name, reason = why, "stopped the account's puppet and sender here");
            self.session.set(
                crate::puppet::SessionState::Disconnected,
                None,
                None,
                Some(format!("this instance no longer runs the account: {why}")),
            );
        }
    }

    /// The instance running this account's puppet, as last seen (`None`: nobody, or
    /// not known yet).
    pub fn holder(&self) -> Option<String> {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How many accounts this instance runs, and how many it should: its fair share of
/// the accounts among the instances sharing the store (all of them while it is alone).
#[derive(Default)]
pub struct Share {
    held: AtomicUsize,
    /// 0 until known.
    fair: AtomicUsize,
    last_given_back: std::sync::Mutex<Option<Instant>>,
}

impl Share {
    /// `accounts` spread over `instances` live instances.
    pub fn set_fair(&self, accounts: usize, instances: usize) {
        self.fair
            .store(accounts.div_ceil(instances.max(1)), AtomicOrdering::Release);
    }

    /// Holds its share (or more).
    fn full(&self) -> bool {
        let fair = self.fair.load(AtomicOrdering::Acquire);
        fair > 0 && self.held.load(AtomicOrdering::Acquire) >= fair
    }

    /// Whether to give one account back now: more than the share is held, and none was
    /// given back within the last `every`.
    fn give_one_back(&self, every: Duration) -> bool {
        let fair = self.fair.load(AtomicOrdering::Acquire);
        if fair == 0 || self.held.load(AtomicOrdering::Acquire) <= fair {
            return false;
        }
        let mut last = self
            .last_given_back
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The accounts of this waas, in configuration order.
pub struct Accounts {
    list: Vec<Arc<Account>>,
    by_name: HashMap<String, Arc<Account>>,
}

/// Why an unscoped route cannot pick an account.
#[derive(Debug, thiserror::Error)]
#[error(
    "there are several accounts and none is named `default`: use /v1/accounts/{{account}}/… (one of: {0})"
)]
pub struct AccountRequired(pub String);

impl Accounts {
    pub fn new(list: Vec<Arc<Account>>) -> Accounts {
        let by_name = list.iter().map(|a| (a.name.clone(), a.clone())).collect();
        Accounts { list, by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Account>> {
        self.by_name.get(name)
    }

    /// The account an unscoped route acts on: the only one, or the one named
    /// `default`.
    pub fn unscoped(&self) -> Result<&Arc<Account>, AccountRequired> {
        if self.list.len() == 1 {
            return Ok(&self.list[0]);
        }
        self.get(DEFAULT_ACCOUNT)
            .ok_or_else(|| AccountRequired(self.names().join(", ")))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.list.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|a| a.name.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
