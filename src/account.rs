//! An account: one WeChat login, and everything that exists once per login — its
//! puppet, its session, its ingest (events stored as the account's) and its sender
//! (the account's queued sends). `App` holds them in [`Accounts`]; nothing below the
//! API assumes there is only one. Each account's puppet starts, reconnects and fails on
//! its own: one dead gateway never delays another account's events or sends.

use std::collections::HashMap;
use std::sync::Arc;

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
        })
    }

    /// Starts the account's puppet and sender on `tracker`.
    pub fn spawn(&self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        tracker.spawn(
            self.puppet
                .clone()
                .run(self.ingest.clone(), shutdown.clone()),
        );
        tracker.spawn(self.sender.clone().run(tracker.clone(), shutdown.clone()));
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
