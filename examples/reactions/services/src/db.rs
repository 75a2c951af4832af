//! The services' databases: SQLite (a file, the default) or PostgreSQL (a
//! URL), through sqlx's `Any` driver so one set of queries serves both. Every
//! query uses `$1`-style parameters, which both engines accept.
//!
//! Each service embeds its migrations, one directory per engine
//! (`migrations/<service>/{sqlite,postgres}`), and applies them with sqlx's
//! [`Migrator`] at start.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor};

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("unsupported database URL '{url}': use sqlite:<file> or postgres://...")
        }
    }
}

/// One migration per engine, as SQL text embedded in the binary.
pub struct Migrations {
    pub sqlite: &'static [(i64, &'static str, &'static str)],
    pub postgres: &'static [(i64, &'static str, &'static str)],
}

/// A connection pool with the service's schema applied.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub engine: Engine,
    /// SQLite's one writer, taken in the process (see [`Db::writer`]).
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl Db {
    /// Connects (creating a SQLite file if missing) and migrates.
    pub async fn connect(url: &str, migrations: &Migrations) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let engine = Engine::of(url)?;
        let url = match engine {
            Engine::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(match engine {
                // SQLite has one writer at a time: more connections only queue on its lock.
                Engine::Sqlite => 4,
                Engine::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            // A ping before each use costs SQLite a round trip to its worker
            // thread per query and checks nothing a local file can lose; a
            // server connection can break while idle, so PostgreSQL's is kept.
            .test_before_acquire(engine == Engine::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // WAL lets readers run beside the writer; NORMAL syncs at
                        // checkpoints: a committed row survives a crash of the
                        // process (what the outbox needs), not of the machine.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("cannot open database {}", redact(&url)))?;
        let list = match engine {
            Engine::Sqlite => migrations.sqlite,
            Engine::Postgres => migrations.postgres,
        };
        let migrator = Migrator {
            migrations: Cow::Owned(
                list.iter()
                    .map(|(version, description, sql)| {
                        Migration::new(
                            *version,
                            Cow::Borrowed(description),
                            MigrationType::Simple,
                            Cow::Borrowed(sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&pool)
            .await
            .context("cannot migrate the database")?;
        Ok(Self {
            pool,
            engine,
            writer: Arc::default(),
        })
    }

    /// Held by every write for its whole transaction when the database is
    /// SQLite, which admits one writer at a time: a second writer that
    /// reaches SQLite gets `SQLITE_BUSY`, and its busy handler sleeps 1, 2,
    /// 5, 10… ms before trying again, which is what a request's p99 becomes
    /// under load. Queued here, writers wait only for the one before them.
    /// PostgreSQL locks rows, not the database: `None`.
    pub async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.engine {
            Engine::Sqlite => Some(self.writer.lock().await),
            Engine::Postgres => None,
        }
    }
}

/// `sqlite:<path>` for a file path.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}://***{}", &url[..start], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch: the one clock of this example. Both
/// services stamp events and notifications with it, and they run on one
/// machine, so a notification's delay is `created_at - event.created_at`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Placeholders `$from, $from+1, …` for an `IN (…)` list of `n` values.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
