//! The `Store` contract, held by the memory store and by Redis (a real redis-server): values and
//! expiry, compare-and-set won exactly once across instances, token buckets, and Redis outages
//! that fail fast and heal without a restart. Also TLS and passwords, which never reach a log.

use std::sync::Arc;
use std::time::Duration;

use keygate_proxy::store::redis::RedisStore;
use keygate_proxy::store::{Store, StoreError, Stores, Take};
use keygate_tests::logs;
use keygate_tests::redis::{MASTER_NAME, RedisCluster, RedisOptions, RedisServer, SentinelGroup, cli, wait_until};

/// What every store must do; run against each kind.
async fn contract(s: &dyn Store) {
    s.set("k", b"v", Some(Duration::from_millis(500))).await.unwrap();
    s.set("forever", b"v", None).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(s.get("nothing").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.get("k").await.unwrap(), None, "values expire");
    assert_eq!(s.get("forever").await.unwrap().as_deref(), Some(&b"v"[..]));
    s.delete("forever").await.unwrap();
    s.delete("forever").await.unwrap();
    assert_eq!(s.get("forever").await.unwrap(), None);

    s.set("chain", b"a", Some(Duration::from_secs(60))).await.unwrap();
    assert!(
        s.compare_and_set("chain", b"a", b"b", Some(Duration::from_millis(500)))
            .await
            .unwrap()
    );
    assert!(
        !s.compare_and_set("chain", b"a", b"c", None).await.unwrap(),
        "a stale read loses"
    );
    assert_eq!(s.get("chain").await.unwrap().as_deref(), Some(&b"b"[..]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.get("chain").await.unwrap(), None, "compare-and-set sets the new TTL");
    assert!(!s.compare_and_set("missing", b"", b"x", None).await.unwrap());
    assert_eq!(s.get("missing").await.unwrap(), None, "a missing key is never created");

    // Binary values survive.
    let bytes: Vec<u8> = (0..=255).collect();
    s.set("bin", &bytes, None).await.unwrap();
    assert_eq!(s.get("bin").await.unwrap(), Some(bytes));

    for _ in 0..3 {
        assert_eq!(s.take("bucket", 20.0, 3).await.unwrap(), Take::Allowed);
    }
    let Take::Limited(wait) = s.take("bucket", 20.0, 3).await.unwrap() else {
        panic!("a fourth request within a burst of three must be limited");
    };
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(50), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(
        s.take("bucket", 20.0, 3).await.unwrap(),
        Take::Allowed,
        "the bucket refills"
    );
    assert_eq!(
        s.take("other", 20.0, 3).await.unwrap(),
        Take::Allowed,
        "buckets are per key"
    );
}

/// 100 concurrent swaps of the same expected value, spread over `stores`: exactly one wins.
async fn one_winner(stores: &[Arc<dyn Store>]) {
    stores[0].set("race", b"link-0", None).await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                s.compare_and_set("race", b"link-0", format!("link-{}", i + 1).as_bytes(), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let stores = Stores::default();
    contract(&*stores.memory()).await;
    one_winner(&[stores.memory()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_keeps_the_contract_across_instances() {
    let redis = RedisServer::start();
    contract_across_instances(&redis.url()).await;
}

/// The contract on a Redis store for `url`, then one winner across two processes' worth of
/// stores, each with its own connection.
async fn contract_across_instances(url: &str) {
    contract(&RedisStore::open(url, None).unwrap()).await;
    let a: Arc<dyn Store> = Arc::new(RedisStore::open(url, None).unwrap());
    let b: Arc<dyn Store> = Arc::new(RedisStore::open(url, None).unwrap());
    one_winner(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_store_keeps_the_contract_across_instances() {
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start("contract-pw"))
        .await
        .unwrap();
    contract_across_instances(&group.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_store_keeps_the_contract_across_instances() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    contract_across_instances(&cluster.url()).await;
    // The contract's keys landed on more than one master: the store routed them by slot.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| cli(n.port, None, &["DBSIZE"]) != "0")
        .count();
    assert!(holding > 1, "all keys on one node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_a_swap_counts_only_once_a_replica_has_it() {
    logs::capture();
    let mut group = tokio::task::spawn_blocking(|| SentinelGroup::start("confirm-s3cret"))
        .await
        .unwrap();
    // Wrong credentials, for the master and for the sentinels (which have none here), fail
    // without the values reaching an error or a log line.
    let url = group.url();
    for (wrong, secret) in [
        (url.replace("confirm-s3cret", "wrong-master-pw"), "wrong-master-pw"),
        (format!("{url}?sentinelPassword=wrong-sentinel-pw"), "wrong-sentinel-pw"),
    ] {
        let err = within(RedisStore::open(&wrong, None).unwrap().get("k"))
            .await
            .unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
        logs::assert_not_logged(secret);
    }

    let store = RedisStore::open(&group.url(), None).unwrap();
    assert_eq!(store.min_replicas(), 1);
    store.set("link", b"a", None).await.unwrap();
    assert!(store.compare_and_set("link", b"a", b"b", None).await.unwrap());

    // With both replicas gone nothing can confirm a swap: it fails, and is undone so that the
    // caller's retry can still win once a replica is back.
    group.servers[1].stop();
    group.servers[2].stop();
    let refused = within(store.compare_and_set("link", b"b", b"c", None)).await;
    match refused {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("0 of 1 replicas confirmed"), "{m}"),
        other => panic!("an unconfirmed swap must fail, got {other:?}"),
    }
    assert_eq!(
        store.get("link").await.unwrap().as_deref(),
        Some(&b"b"[..]),
        "the swap was undone"
    );
    // `minReplicas=0` trades that guarantee for availability.
    let eager = RedisStore::open(&format!("{}?minReplicas=0", group.url()), None).unwrap();
    assert!(eager.compare_and_set("link", b"b", b"c", None).await.unwrap());

    let group = tokio::task::spawn_blocking(move || {
        group.servers[1].restart();
        let (port, password) = (group.servers[1].port, group.password.clone());
        wait_until("the replica's resync", Duration::from_secs(10), || {
            cli(port, Some(&password), &["INFO", "replication"]).contains("master_link_status:up")
        });
        group
    })
    .await
    .unwrap();
    assert!(store.compare_and_set("link", b"c", b"d", None).await.unwrap());
    assert!(logs::captured().contains("too few replicas confirmed a compare-and-set"));
    logs::assert_not_logged(&group.password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_is_left_for_the_one_sentinel_names() {
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start("switch-pw"))
        .await
        .unwrap();
    let store = RedisStore::open(&group.url(), None).unwrap();
    store.set("k", b"before", None).await.unwrap();
    // A switch without a crash (a manual failover, or sentinels that lost sight of a master
    // still running): the old master lives on as a replica, reachable but no longer writable.
    let (group, old, new) = tokio::task::spawn_blocking(move || {
        let old = group.master_port().unwrap();
        assert_eq!(
            cli(group.sentinel_ports[0], None, &["SENTINEL", "FAILOVER", MASTER_NAME]),
            "OK"
        );
        let mut new = None;
        wait_until("Sentinel naming a new master", Duration::from_secs(30), || {
            new = group.master_port().filter(|&p| p != old);
            new.is_some()
        });
        let password = group.password.clone();
        wait_until("the old master serving as a replica", Duration::from_secs(30), || {
            cli(old, Some(&password), &["ROLE"]).starts_with("slave")
        });
        (group, old, new.unwrap())
    })
    .await
    .unwrap();
    let mut written = false;
    for _ in 0..100 {
        if within(store.set("k", b"after", None)).await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "writes never moved to the new master");
    assert_eq!(cli(new, Some(&group.password), &["GET", "k"]), "after");
    assert!(store.compare_and_set("k", b"after", b"swapped", None).await.unwrap());
    assert_ne!(old, new);
}

#[tokio::test]
async fn one_connection_per_redis_url() {
    let stores = Stores::default();
    let a = stores.redis("redis://127.0.0.1:1").unwrap();
    let b = stores.redis("redis://127.0.0.1:1").unwrap();
    let c = stores.redis("redis://127.0.0.1:2").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    let err = stores.redis("http://:hunter2@127.0.0.1:1").err().unwrap();
    assert!(err.to_string().contains("redis:// or rediss://"), "{err}");
    assert!(!err.to_string().contains("hunter2"));
    let err = stores.redis("redis://:hunter2@[::1").err().unwrap();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// Bounded by the store's own timeouts; this only turns a hang into a failure.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("a dead Redis must not hang requests")
}

#[tokio::test]
async fn redis_outage_fails_fast_and_heals_without_a_restart() {
    logs::capture();
    let mut redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret-redis-pass".into()),
        tls: None,
        ..Default::default()
    });
    let store = RedisStore::open(&redis.url(), None).unwrap();
    store.set("k", b"v", None).await.unwrap();

    redis.stop();
    let down = within(store.get("k")).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    let down = within(store.take("b", 1.0, 1)).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");

    redis.restart();
    let mut healed = false;
    for _ in 0..100 {
        if within(store.set("k", b"again", None)).await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed, "the store never reconnected after Redis came back");
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"again"[..]));
    // Scripts are cached per server; a restarted server has forgotten them.
    store.set("c", b"1", None).await.unwrap();
    assert!(store.compare_and_set("c", b"1", b"2", None).await.unwrap());

    let err = RedisStore::open(&redis.url().replace("s3cret-redis-pass", "wrong-pass"), None).unwrap();
    assert!(err.get("k").await.is_err(), "a wrong password is refused");
    let logs = logs::captured();
    assert!(
        logs.contains(&format!("127.0.0.1:{}", redis.port)),
        "logs name the endpoint"
    );
    logs::assert_not_logged("s3cret-redis-pass");
    logs::assert_not_logged("wrong-pass");
}

#[tokio::test]
async fn redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("tls-pass".into()),
        tls: Some((cert_path, key_path)),
        ..Default::default()
    });
    assert!(redis.url().starts_with("rediss://"));

    let store = RedisStore::open(&redis.url(), Some(cert.cert.pem().as_bytes())).unwrap();
    contract(&store).await;

    // The same server is refused when its certificate is not trusted.
    let untrusted = RedisStore::open(&redis.url(), None).unwrap();
    assert!(matches!(untrusted.get("k").await, Err(StoreError::Unavailable(_))));
    // And TLS is not optional: plain Redis protocol to the TLS port fails.
    let plain = RedisStore::open(&redis.url().replace("rediss://", "redis://"), None).unwrap();
    assert!(plain.get("k").await.is_err());
}
