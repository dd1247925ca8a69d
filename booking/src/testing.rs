//! Fresh databases for tests: a SQLite file in a temporary directory, or a new
//! PostgreSQL database on the server named by `DATABASE_URL`, dropped again
//! when the test is done. Tests run the same body on both through
//! [`databases`].

use std::sync::atomic::{AtomicU32, Ordering};

use crate::db::built_sql;
use crate::db::Db;

/// A database that exists for one test.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    cleanup: Option<Cleanup>,
}

struct Cleanup {
    admin_url: String,
    name: String,
    dir: Option<std::path::PathBuf>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A migrated SQLite database in a new temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!(
            "kontakt-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let url = format!("sqlite://{}/kontakt.db?mode=rwc", dir.display());
        let db = Db::connect(&url, 8).await.expect("open SQLite");
        db.migrate().await.expect("migrate SQLite");
        TestDb {
            db,
            url,
            cleanup: Some(Cleanup {
                admin_url: String::new(),
                name: String::new(),
                dir: Some(dir),
            }),
        }
    }

    /// A migrated PostgreSQL database of its own, or `None` (with a notice)
    /// when `DATABASE_URL` is not set.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            eprintln!("notice: DATABASE_URL is not set; skipping the PostgreSQL run of this test");
            return None;
        };
        let name = format!(
            "kt_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        let admin = Db::connect(&admin_url, 1)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(built_sql(format!("CREATE DATABASE {name}")))
            .execute(admin.pool())
            .await
            .expect("create a test database");
        admin.close().await;
        let url = replace_database(&admin_url, &name);
        let db = Db::connect(&url, 16)
            .await
            .expect("connect to the test database");
        db.migrate().await.expect("migrate PostgreSQL");
        Some(TestDb {
            db,
            url,
            cleanup: Some(Cleanup {
                admin_url,
                name,
                dir: None,
            }),
        })
    }
}

/// SQLite always, and PostgreSQL when `DATABASE_URL` is set.
pub async fn databases() -> Vec<TestDb> {
    let mut out = vec![TestDb::sqlite().await];
    if let Some(pg) = TestDb::postgres().await {
        out.push(pg);
    }
    out
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        if let Some(dir) = cleanup.dir {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        // Dropping a PostgreSQL database needs a connection of its own, and
        // Drop cannot await, so a short-lived thread with its own runtime does
        // it. It must not touch this database's pool: the pool's connections
        // belong to the test's runtime, which is blocked here until the thread
        // ends. `WITH (FORCE)` ends those connections from the server side.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = Db::connect(&cleanup.admin_url, 1).await {
                    let _ = sqlx::query(built_sql(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        cleanup.name
                    )))
                    .execute(admin.pool())
                    .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// `postgres://u@h:5432/test?x=y` with its database replaced by `name`.
pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{name}?{q}"),
        None => format!("{host}/{name}"),
    }
}
