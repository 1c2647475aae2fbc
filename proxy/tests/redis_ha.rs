//! Redis that survives a failover, on real processes: a Sentinel group (master, replica, three
//! `redis-sentinel`s) whose master is killed under load through the proxy, and a three-master
//! Redis Cluster (`redis-cli --cluster create`) whose slot holding a live chain's record is
//! migrated while the chain is used. What a user checks: chain routes answer 503
//! `SESSION_STORE_UNAVAILABLE` while the master is gone (never a 500), no link is ever accepted
//! twice, service resumes by itself, and the Redis password never reaches a log.
//!
//! The failover test prints its figures (time to resume, 503 count); BENCHMARKS.md records them:
//! `cargo test -p keygate-proxy --test redis_ha -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate_tests::logs;
use keygate_tests::redis::{RedisCluster, SentinelGroup, cli, wait_until};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

const APP_KEY: &str = "ha-app-key-0123456789";
const PASSWORD: &str = "sentinel-group-s3cret";

/// A chain policy on `redis_url`, a chain route `/api` (its buckets, `per: session`, on the
/// chain's store too) and a chain route `/tight` limited to two requests per app.
fn manifests(up: &Upstream, redis_url: &str) -> String {
    let mut yaml = secret_yaml("app-keys", &BTreeMap::from([("shop", APP_KEY)]));
    yaml += &secret_yaml("redis", &BTreeMap::from([("url", redis_url)]));
    yaml += "apiVersion: keygate.dev/v1alpha1\nkind: SessionChainPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  createPath: /api/session\n  apiKeysSecretRef: {name: app-keys}\n  ttl: 300s\n  store: redis\n  redisUrl: {name: redis, key: url}\n---\n";
    let chain = "  auth: sessionChain\n  sessionChainRef: web\n";
    yaml + &route_yaml(
        "api",
        "/api",
        &up.url(),
        &format!("{chain}  rateLimit: {{per: session, requestsPerSecond: 10000}}\n"),
    ) + &route_yaml(
        "tight",
        "/tight",
        &up.url(),
        &format!("{chain}  rateLimit: {{per: app, requestsPerSecond: 1, burst: 2}}\n"),
    )
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A new session, retried while the store is unavailable (the only refusal allowed here).
async fn create(proxy: &Proxy) -> String {
    for _ in 0..400 {
        let req = Request::post(proxy.url("/api/session"))
            .header("content-type", "application/json")
            .header("x-api-key", APP_KEY)
            .body(Full::new(Bytes::from_static(br#"{"machine_id": "m-1"}"#)))
            .unwrap();
        let got = send(req).await;
        if got.status == StatusCode::OK {
            return got.json()["session_id"].as_str().unwrap().to_string();
        }
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(got.error_code(), "SESSION_STORE_UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no session could be created");
}

/// Sends `link` for `session` on `path`.
async fn send_link(proxy: &Proxy, path: &str, session: &str, link: &str) -> Got {
    get(
        &proxy.url(path),
        &[
            ("x-api-key", APP_KEY),
            ("x-session-id", session),
            ("x-request-id", link),
        ],
    )
    .await
}

fn advanced(got: &Got) -> bool {
    got.headers.get("x-keygate-chain").is_some_and(|v| v == "advanced")
}

/// What one request got.
struct Outcome {
    session: String,
    link: String,
    status: StatusCode,
    code: Option<String>,
    at: Instant,
}

/// One browser following its chain until `stop`: after a 503 it sends the same link again, as
/// the SDK does; a session whose link was consumed by a swap that was never confirmed (reported
/// 503, but it reached the new master) is refused and replaced by a new one.
async fn client(proxy: Arc<Proxy>, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Outcome>>>) -> usize {
    let mut session = create(&proxy).await;
    let mut last = session.clone();
    let mut after_503 = false;
    let mut restarts = 0;
    while !stop.load(Ordering::Relaxed) {
        let link = sha256_hex(&last);
        let got = send_link(&proxy, "/api/x", &session, &link).await;
        let code = (got.status != StatusCode::OK).then(|| got.error_code());
        let out_of_session = code.as_deref() == Some("REQUEST_OUT_OF_SESSION");
        log.lock().await.push(Outcome {
            session: session.clone(),
            link: link.clone(),
            status: got.status,
            code: code.clone(),
            at: Instant::now(),
        });
        if got.status == StatusCode::OK {
            assert!(advanced(&got), "an accepted link advances the chain");
            last = link;
            after_503 = false;
        } else if after_503 && out_of_session {
            session = create(&proxy).await;
            last = session.clone();
            restarts += 1;
            after_503 = false;
        } else {
            assert!(!advanced(&got), "a refused request does not advance");
            after_503 = got.status == StatusCode::SERVICE_UNAVAILABLE;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    restarts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_answers_503_then_resumes_without_accepting_a_link_twice() {
    logs::capture();
    let mut group = tokio::task::spawn_blocking(|| SentinelGroup::start(PASSWORD))
        .await
        .unwrap();
    let up = Upstream::ok().await;
    let proxy = Arc::new(Proxy::start(&manifests(&up, &group.url())).await);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    const CLIENTS: usize = 6;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(proxy.clone(), stop.clone(), log.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let old_master = group.master_port().expect("a master");
    group.master().stop();
    let killed = Instant::now();
    let (group, new_master) = tokio::task::spawn_blocking(move || {
        let mut new_master = None;
        wait_until("Sentinel naming a new master", Duration::from_secs(30), || {
            new_master = group.master_port().filter(|&p| p != old_master);
            new_master.is_some()
        });
        (group, new_master.unwrap())
    })
    .await
    .unwrap();
    let switched = Instant::now();
    // Service resumes by itself: every client gets an acceptance after Sentinel switched.
    let deadline = switched + Duration::from_secs(20);
    loop {
        let resumed = {
            let log = log.lock().await;
            let sessions: HashSet<&str> = log
                .iter()
                .filter(|o| o.at > switched && o.status == StatusCode::OK)
                .map(|o| o.session.as_str())
                .collect();
            sessions.len()
        };
        if resumed >= CLIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {resumed} of {CLIENTS} clients resumed after the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut restarts = 0;
    for c in clients {
        restarts += c.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().await);
    let mut unavailable = 0;
    let mut last_503 = None;
    let mut accepted = HashSet::new();
    for o in &log {
        match (o.status, o.code.as_deref()) {
            (StatusCode::OK, _) => {
                assert!(
                    accepted.insert((o.session.clone(), o.link.clone())),
                    "a link was accepted twice"
                );
            }
            (StatusCode::SERVICE_UNAVAILABLE, Some("SESSION_STORE_UNAVAILABLE")) => {
                unavailable += 1;
                last_503 = Some(o.at);
            }
            (
                StatusCode::UNAUTHORIZED | StatusCode::CONFLICT | StatusCode::FORBIDDEN,
                Some("REQUEST_OUT_OF_SESSION"),
            ) => {}
            (status, code) => panic!("during a failover a chain route answered {status} {code:?}"),
        }
    }
    assert!(unavailable > 0, "no request saw the master gone");
    // Replayed now, on the new master, every link accepted before, during or after the failover
    // is refused: none was lost to asynchronous replication.
    for (session, link) in &accepted {
        let got = send_link(&proxy, "/api/x", session, link).await;
        assert_ne!(got.status, StatusCode::OK, "a link accepted before was accepted again");
        assert_eq!(got.error_code(), "REQUEST_OUT_OF_SESSION");
    }
    logs::assert_not_logged(PASSWORD);
    assert!(
        logs::captured().contains(&format!("127.0.0.1:{new_master}")),
        "the logs name the master Sentinel pointed to"
    );

    let resumed_at = log
        .iter()
        .filter(|o| o.status == StatusCode::OK && last_503.is_some_and(|t| o.at > t))
        .map(|o| o.at)
        .min()
        .unwrap_or(switched);
    eprintln!(
        "failover: {} requests by {CLIENTS} clients, {} accepted, {unavailable} answered 503, {restarts} sessions \
         restarted; Sentinel switched {:.2}s after the kill (down-after {}ms); chains resumed {:.2}s after the \
         kill, {:.0}ms after the switch",
        log.len(),
        accepted.len(),
        (switched - killed).as_secs_f64(),
        SentinelGroup::DOWN_AFTER.as_millis(),
        (resumed_at - killed).as_secs_f64(),
        resumed_at.saturating_duration_since(switched).as_secs_f64() * 1000.0,
    );
    drop(group);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_chains_and_rate_limits_through_a_slot_migration() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let up = Upstream::ok().await;
    let proxy = Arc::new(Proxy::start(&manifests(&up, &cluster.url())).await);

    // Buckets: `per: app` on /tight admits its burst of two, then 429.
    let tight = create(&proxy).await;
    let mut last = tight.clone();
    for _ in 0..2 {
        let link = sha256_hex(&last);
        assert_eq!(
            send_link(&proxy, "/tight/x", &tight, &link).await.status,
            StatusCode::OK
        );
        last = link;
    }
    let got = send_link(&proxy, "/tight/x", &tight, &sha256_hex(&last)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);

    // A live chain, used without pause while its record's slot moves to another master.
    let session = create(&proxy).await;
    let mut keys = Vec::new();
    for node in &cluster.nodes {
        let found = cli(node.port, None, &["--scan", "--pattern", "keygate:chain:*"]);
        keys.extend(
            found
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| (node.port, l.to_string())),
        );
    }
    // Two sessions exist; the chain under test is the newest, found by its record's value.
    let (source, key) = keys
        .into_iter()
        .find(|(port, key)| cli(*port, None, &["GET", key]).contains(&sha256_hex(&session)))
        .expect("the chain's record on some node");
    let slot: u16 = cli(source, None, &["CLUSTER", "KEYSLOT", &key]).parse().unwrap();
    let target = cluster.nodes.iter().map(|n| n.port).find(|&p| p != source).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let user = {
        let (proxy, stop, session) = (proxy.clone(), stop.clone(), session.clone());
        tokio::spawn(async move {
            let mut last = session.clone();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let link = sha256_hex(&last);
                let got = send_link(&proxy, "/api/x", &session, &link).await;
                if got.status == StatusCode::OK {
                    last = link;
                }
                statuses.push((got.status, (got.status != StatusCode::OK).then(|| got.error_code())));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (statuses, last)
        })
    };
    let (source_id, target_id) = (cluster.id(source), cluster.id(target));
    let step = |args: &[&str], port: u16| {
        let out = cli(port, None, args);
        assert_eq!(out, "OK", "{args:?} on {port}");
    };
    let pause = || std::thread::sleep(Duration::from_millis(300));
    let slot_s = slot.to_string();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let cluster = tokio::task::spawn_blocking(move || {
        pause();
        step(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &source_id], target);
        step(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &target_id], source);
        pause();
        let target_port = target.to_string();
        step(
            &["MIGRATE", "127.0.0.1", &target_port, "", "0", "5000", "KEYS", &key],
            source,
        );
        // The record is on the target now; the source answers ASK for it.
        pause();
        for port in ports {
            step(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &target_id], port);
        }
        pause();
        assert_eq!(cluster.owner(slot), target, "the slot moved");
        assert!(cli(target, None, &["EXISTS", &key]) == "1", "the record moved with it");
        cluster
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (statuses, last) = user.await.unwrap();
    assert!(
        statuses.len() > 20,
        "the chain was used throughout: {} requests",
        statuses.len()
    );
    for (status, code) in &statuses {
        assert_eq!(
            *status,
            StatusCode::OK,
            "a request during the migration got {status} {code:?}"
        );
    }
    // The chain goes on, and its old links stay spent.
    let got = send_link(&proxy, "/api/x", &session, &sha256_hex(&last)).await;
    assert_eq!(got.status, StatusCode::OK);
    let got = send_link(&proxy, "/api/x", &session, &sha256_hex(&session)).await;
    assert_eq!(got.error_code(), "REQUEST_OUT_OF_SESSION");
    drop(cluster);
}
