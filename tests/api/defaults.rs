//! Safe defaults: the demo is one setting away from production, which
//! refuses the demo's accounts; `/dev/mail` answers only on loopback; and the
//! embedded relay listens where HTTP does unless told otherwise.

use booking::testing::{databases, TestDb};
use kontakt_tests::{spawn_app, spawn_app_with, TempDir};
use web::{Application, Settings};

fn backend(database: &TestDb) -> &'static str {
    if database.url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

#[tokio::test]
async fn without_the_demo_the_server_refuses_to_start_while_demo_accounts_exist() {
    for database in databases().await {
        let backend = backend(&database);
        let url = database.url.clone();
        // The demo seeds its accounts into the empty database.
        let demo = spawn_app(database, backend).await;

        let dir = TempDir::new();
        let mut production = Settings::for_tests(dir.path.clone(), url);
        production.demo = false;
        let refused = Application::build(production).await;
        let error = match refused {
            Ok(_) => panic!("{backend}: a server without the demo started over demo accounts"),
            Err(e) => format!("{e:#}"),
        };
        for account in [
            "admin.lycksele@kontakt.demo",
            "handlaggare.helsingborg@kontakt.demo",
            "anna@example.se",
        ] {
            assert!(error.contains(account), "{backend}: {error}");
        }
        assert!(error.contains("empty database"), "says what to do: {error}");
        drop(demo);
    }
}

#[tokio::test]
async fn without_the_demo_an_empty_database_serves_and_seeds_nothing() {
    for database in databases().await {
        let backend = backend(&database);
        let app = spawn_app_with(database, backend, |s| s.demo = false).await;
        assert_eq!(app.get("/healthz", None).await.status(), 200, "{backend}");
        let accounts = booking::seed::demo_accounts(&app.db).await.unwrap();
        assert!(accounts.is_empty(), "{backend}: {accounts:?}");
        assert!(booking::seed::is_empty(&app.db).await.unwrap());
        assert_eq!(app.get("/dev/mail", None).await.status(), 404);
    }
}

#[tokio::test]
async fn dev_mail_answers_only_on_a_loopback_listener() {
    for database in databases().await {
        let backend = backend(&database);
        let local = spawn_app(database, backend).await;
        assert_eq!(
            local.get("/dev/mail", None).await.status(),
            200,
            "{backend}"
        );
        drop(local);
    }
    for database in databases().await {
        let backend = backend(&database);
        // Every interface: the test still reaches it on 127.0.0.1.
        let open = spawn_app_with(database, backend, |s| {
            s.listen = "0.0.0.0:0".parse().unwrap();
        })
        .await;
        assert_eq!(open.get("/healthz", None).await.status(), 200);
        assert_eq!(open.get("/dev/mail", None).await.status(), 404, "{backend}");
        assert_eq!(open.get("/dev/mail/anything", None).await.status(), 404);
    }
}

#[tokio::test]
async fn the_embedded_relay_listens_on_the_interface_http_listens_on() {
    for database in databases().await {
        let backend = backend(&database);
        // The relay's own defaults: every interface, with ports the kernel
        // picks so that tests running side by side do not collide.
        let app = spawn_app_with(database, backend, |s| {
            s.relay.listen_udp = Some("0.0.0.0:0".parse().unwrap());
            s.relay.listen_tcp = Some("0.0.0.0:0".parse().unwrap());
            s.relay.relay_bind_ipv4 = std::net::Ipv4Addr::UNSPECIFIED;
        })
        .await;
        let relay = app.relay_udp.expect("the relay runs");
        assert_eq!(
            relay.ip(),
            std::net::Ipv4Addr::LOCALHOST,
            "{backend}: HTTP listens on 127.0.0.1, so the relay does"
        );
    }
}
