//! `keygate-chain-bench`: the load generator `bench/run` uses to measure what a session-chain
//! check costs. wrk cannot drive a hash chain (every request's `x-request-id` is
//! the SHA-256 of the previous one, and a session's requests must arrive in order), so each of
//! `--concurrency` workers creates its own session and sends its chain one request at a time,
//! as a browser does. Without `--create` the same workers send plain requests, the baseline.
//!
//! ```text
//! keygate-chain-bench --url http://127.0.0.1:18083/bench/hello [--create URL --key KEY]
//!                     [--concurrency 16] [--duration-ms 5000] [--warmup-ms 1000] [--rate R]
//! ```
//!
//! Without `--rate` the workers are closed-loop: each sends its next request when the last is
//! answered. With `--rate R` the load is open-loop at R requests/s in all: requests fall due
//! at evenly spaced times, each is taken by the next worker free, and its latency counts from
//! when it was due, not from when it was sent, so a stall is charged to every request it
//! delayed (no coordinated omission).
//!
//! Prints one line: `requests=N rps=R p50_ms=A p99_ms=B p999_ms=C errors=E`. Latency is
//! measured after the warm-up; any non-2xx answer counts as an error.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: keygate-chain-bench --url URL [--create URL --key KEY] [--concurrency N] [--duration-ms MS] [--warmup-ms MS] [--rate R]";

struct Args {
    url: String,
    create: Option<String>,
    key: String,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    /// Open-loop requests/s over all workers; closed-loop when absent.
    rate: Option<f64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        url: String::new(),
        create: None,
        key: String::new(),
        concurrency: 16,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        let millis = |v: String| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(
                v.parse().with_context(|| format!("{v:?} is not milliseconds"))?,
            ))
        };
        match flag.as_str() {
            "--url" => args.url = value("--url")?,
            "--create" => args.create = Some(value("--create")?),
            "--key" => args.key = value("--key")?,
            "--concurrency" => args.concurrency = value("--concurrency")?.parse().context("--concurrency")?,
            "--duration-ms" => args.duration = millis(value("--duration-ms")?)?,
            "--warmup-ms" => args.warmup = millis(value("--warmup-ms")?)?,
            "--rate" => args.rate = Some(value("--rate")?.parse().context("--rate")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.url.is_empty() || args.concurrency == 0 || args.duration.is_zero() {
        bail!("--url, a positive --concurrency and --duration-ms are required\n{USAGE}");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second\n{USAGE}");
    }
    Ok(args)
}

/// What one worker saw after the warm-up.
#[derive(Default)]
struct Tally {
    micros: Vec<u64>,
    errors: u64,
}

/// The due times of an open-loop run, shared by the workers.
type Schedule = std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>;

/// How long the pacing thread sleeps at least. Waking for every due time (every 44 µs at
/// 22,000 requests/s) kept the load generator's core 97% busy with its own wake-ups, which the
/// latency then measured; a quarter millisecond holds it to 4,000 wake-ups a second, and a
/// request is sent at most that long after it fell due (the wait still counts as latency).
const PACING_QUANTUM: Duration = Duration::from_micros(250);

/// Releases a due time every `1/rate` s until `until`, from a thread of its own. Paced by
/// tokio's timer, which fires to the millisecond, requests left in bursts, one per tick, and
/// each was charged its wait for the tick: about 0.9 ms at the median on a plain route at
/// 22,000 requests/s, more than the proxy's own latency.
fn pace(rate: f64, until: Instant, due_times: tokio::sync::mpsc::UnboundedSender<Instant>) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut due = Instant::now();
    while due < until {
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(PACING_QUANTUM));
            continue;
        }
        while due <= now && due < until {
            if due_times.send(due).is_err() {
                return;
            }
            due += interval;
        }
    }
}

async fn worker(
    args: &Args,
    schedule: Option<Schedule>,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<Tally> {
    let client = keygate_tests::client();
    // (session id, last link) of this worker's chain.
    let mut chain = match &args.create {
        None => None,
        Some(create) => {
            let req = Request::post(create)
                .header("x-api-key", &args.key)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"machine_id": "keygate-chain-bench"}"#,
                )))?;
            let resp = client.request(req).await.context("creating a session")?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!(
                    "creating a session answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let json: serde_json::Value = serde_json::from_slice(&body)?;
            let id = json["session_id"].as_str().context("no session_id")?.to_string();
            Some((id.clone(), id))
        }
    };
    let mut tally = Tally::default();
    loop {
        let started = match &schedule {
            // The lock is held across the wait: the free workers queue for the next due time.
            Some(schedule) => match schedule.lock().await.recv().await {
                Some(due) => due,
                None => break,
            },
            None if Instant::now() < until => Instant::now(),
            None => break,
        };
        let mut req = Request::get(&args.url);
        let mut link = String::new();
        if let Some((id, last)) = &chain {
            link = hex::encode(Sha256::digest(last.as_bytes()));
            req = req
                .header("x-api-key", &args.key)
                .header("x-session-id", id)
                .header("x-request-id", &link);
        }
        let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
        let advanced = resp.headers().contains_key("x-keygate-chain");
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        if started >= measure_from {
            tally.micros.push(started.elapsed().as_micros() as u64);
            tally.errors += u64::from(!ok);
        }
        if let Some((_, last)) = chain.as_mut().filter(|_| advanced) {
            *last = link;
        }
    }
    Ok(tally)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = std::sync::Arc::new(args);
    let measure_from = Instant::now() + args.warmup;
    let until = measure_from + args.duration;
    let schedule = args.rate.map(|rate| {
        let (release, due_times) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || pace(rate, until, release));
        std::sync::Arc::new(tokio::sync::Mutex::new(due_times))
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let args = args.clone();
            let schedule = schedule.clone();
            tokio::spawn(async move { worker(&args, schedule, measure_from, until).await })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await??;
        all.micros.extend(t.micros);
        all.errors += t.errors;
    }
    if all.micros.is_empty() {
        bail!("no request completed");
    }
    all.micros.sort_unstable();
    println!(
        "requests={} rps={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} errors={}",
        all.micros.len(),
        all.micros.len() as f64 / args.duration.as_secs_f64(),
        percentile(&all.micros, 0.50),
        percentile(&all.micros, 0.99),
        percentile(&all.micros, 0.999),
        all.errors
    );
    Ok(())
}

fn main() -> ExitCode {
    keygate_tests::tool_main(
        "keygate-chain-bench",
        tokio::runtime::Builder::new_multi_thread(),
        parse_args(),
        run,
    )
}
