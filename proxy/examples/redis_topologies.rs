//! What a chain's compare-and-set costs on each Redis topology: `cargo run --release -p
//! keygate-proxy --example redis_topologies`. Starts, on loopback, one `redis-server`, a Sentinel
//! group (master, two replicas, three sentinels) and a three-master Cluster, then runs the
//! store's compare-and-set from 32 concurrent callers, each on its own key, for two seconds per
//! topology: Sentinel with `minReplicas` 1 (each accepted swap waits for `WAIT`) and 0. Prints
//! swaps per second and p50/p99 latency. A figure, not a test: see BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_proxy::store::Store;
use keygate_proxy::store::redis::RedisStore;
use keygate_tests::redis::{RedisCluster, RedisServer, SentinelGroup};

const CALLERS: usize = 32;
const RUN: Duration = Duration::from_secs(2);

async fn measure(store: Arc<RedisStore>) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("bench-{i}");
                let mut value = 0u64;
                store.set(&key, b"0", None).await.expect("the store answers");
                let mut latencies = Vec::new();
                while started.elapsed() < RUN {
                    let (old, new) = (value.to_string(), (value + 1).to_string());
                    let t = Instant::now();
                    let won = store
                        .compare_and_set(&key, old.as_bytes(), new.as_bytes(), Some(Duration::from_secs(60)))
                        .await
                        .expect("the store answers");
                    latencies.push(t.elapsed());
                    assert!(won, "each caller owns its key");
                    value += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, at(0.5), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = RedisServer::start();
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start("bench-pw"))
        .await
        .unwrap();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let runs = [
        ("one server", server.url()),
        ("sentinel, minReplicas 1", group.url()),
        ("sentinel, minReplicas 0", format!("{}?minReplicas=0", group.url())),
        ("cluster, 3 masters", cluster.url()),
    ];
    println!("| topology | swaps/s | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|");
    for (name, url) in runs {
        let store = Arc::new(RedisStore::open(&url, None).expect("a usable URL"));
        let (rate, p50, p99) = measure(store).await;
        println!(
            "| {name} | {rate:.0} | {:.3} | {:.3} |",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
}
