//! The embedded harness: a whole waas running inside this process, on a free loopback
//! port, with a store of its own. The one harness behind the integration tests, the
//! bench and the soak (they differ only in what they configure and whether they wait
//! for the login).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Application};
use crate::config::Settings;
use crate::puppet::SessionState;
use crate::puppet::mock::MockPuppet;

/// A waas running inside this process.
pub struct Embedded {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    /// The mock puppets of the accounts that use one, in configuration order.
    pub mocks: Vec<Arc<MockPuppet>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// A folder made for this run, removed on stop (`None` when the caller gave one).
    owned_dir: Option<PathBuf>,
}

/// How to start an [`Embedded`] waas.
pub struct Builder {
    settings: anyhow::Result<Settings>,
    database: Option<PathBuf>,
    wait_for_login: bool,
}

impl Builder {
    /// Keeps the database at this path (to restart on the same store, or to put it on
    /// a small disk); it is left in place on stop.
    pub fn database(mut self, path: impl Into<PathBuf>) -> Builder {
        self.database = Some(path.into());
        self
    }

    /// Returns as soon as the API serves, without waiting for every account to log in
    /// (a puppet that is meant to stay down).
    pub fn without_login(mut self) -> Builder {
        self.wait_for_login = false;
        self
    }

    /// Changes the settings before the start (what a TOML file cannot say as easily).
    pub fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Builder {
        if let Ok(settings) = &mut self.settings {
            change(settings);
        }
        self
    }

    pub async fn start(self) -> anyhow::Result<Embedded> {
        let mut settings = self.settings?;
        let (database, owned_dir) = match self.database {
            Some(path) => (path, None),
            None => {
                let dir = std::env::temp_dir().join(format!("waas-embedded-{}", ulid::Ulid::new()));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (dir.join("waas.db"), Some(dir))
            }
        };
        settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.storage.url = format!("sqlite://{}", database.display());
        let application = Application::build(settings).await?;
        let addr = application.local_addr();
        let app = application.app();
        let mocks = app.accounts.iter().filter_map(|a| a.mock.clone()).collect();
        let mut sessions: Vec<_> = app.accounts.iter().map(|a| a.session.subscribe()).collect();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(application.run(shutdown.clone()));
        if self.wait_for_login {
            for session in &mut sessions {
                session
                    .wait_for(|s| s.state == SessionState::LoggedIn)
                    .await
                    .context("the embedded waas stopped before logging in")?;
            }
        }
        Ok(Embedded {
            app,
            addr,
            mocks,
            shutdown,
            task,
            owned_dir,
        })
    }
}

impl Embedded {
    /// Starts waas from `toml` (over the defaults; `server.listen` and `storage.url`
    /// are chosen here) and returns once every account is logged in.
    pub async fn start(toml: &str) -> anyhow::Result<Embedded> {
        Embedded::builder(toml).start().await
    }

    /// A waas from `toml`, to configure further before it starts.
    pub fn builder(toml: &str) -> Builder {
        Builder {
            settings: Settings::from_toml(toml).map_err(anyhow::Error::from),
            database: None,
            wait_for_login: true,
        }
    }

    /// The first account's mock puppet, to inject events.
    pub fn mock(&self) -> anyhow::Result<&Arc<MockPuppet>> {
        self.mocks
            .first()
            .context("no account of this waas uses the mock puppet")
    }

    /// Shuts down as SIGTERM would, and removes the folder it made. Returns how the
    /// run ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let ended = match self.task.await {
            Ok(ended) => ended,
            Err(e) => Err(anyhow::anyhow!("the embedded waas panicked: {e}")),
        };
        if let Some(dir) = self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        ended
    }
}

/// The PostgreSQL server tests and the cluster bench make their databases on:
/// `WAAS_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn test_postgres() -> String {
    std::env::var("WAAS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database made on a PostgreSQL server for one test or bench run, dropped (with
/// `FORCE`) when this is dropped.
pub struct ScratchDatabase {
    /// The new database's URL.
    pub url: String,
    admin: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `PREFIX_<ulid>` on the server `admin` names.
    pub async fn create(admin: &str, prefix: &str) -> anyhow::Result<ScratchDatabase> {
        use sqlx::Connection;
        let name = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut conn = sqlx::PgConnection::connect(admin).await.with_context(|| {
            format!(
                "cannot reach PostgreSQL at {}: start it (`.ci/run` does), or point \
                 WAAS_TEST_POSTGRES at one",
                crate::config::redact(admin)
            )
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let mut url = url::Url::parse(admin)?;
        url.set_path(&name);
        Ok(ScratchDatabase {
            url: url.to_string(),
            admin: admin.to_string(),
            name,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // On a runtime of its own: the caller's may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}
