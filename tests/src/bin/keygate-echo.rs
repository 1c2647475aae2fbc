//! `keygate-echo`: a small, fast HTTP echo server used as the example upstream in the
//! quick start and as the upstream of the benchmark in `bench/run`.
//!
//! It speaks HTTP/1.1 and HTTP/2 (prior knowledge, h2c) on one plain-TCP listener and answers
//! every request `200 application/json` with what it received:
//! `{"method", "path", "query", "headers": {name: value, ...}, "bodyBytes": N}`. The body is
//! read to the end and only counted. A header sent several times is echoed once, its values
//! joined with `", "`. When the socket is bound it prints one line, `listening on ADDR`.
//!
//! ```text
//! keygate-echo [--listen 127.0.0.1:9000] [--workers N]
//! ```
//!
//! `--workers N` sets the number of tokio worker threads (default: one per CPU).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

const USAGE: &str = "usage: keygate-echo [--listen ADDR] [--workers N]";

struct Args {
    listen: SocketAddr,
    workers: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
        workers: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = v.parse().with_context(|| format!("--listen {v:?}"))?;
            }
            "--workers" => {
                let v = value("--workers")?;
                let n: usize = v.parse().with_context(|| format!("--workers {v:?}"))?;
                if n == 0 {
                    bail!("--workers must be at least 1");
                }
                args.workers = Some(n);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("keygate-echo: {err:#}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n);
    }
    let result = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(serve(args.listen)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keygate-echo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // Out of file descriptors and the like: keep serving the others.
                Err(err) => {
                    eprintln!("accept: {err}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Errors here are the client's doing (reset, malformed request): nothing to report.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();

    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<_> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }

    // Count the body frame by frame; nothing is kept. A broken body is echoed as far as it got.
    let mut body_bytes: u64 = 0;
    if !body.is_end_stream() {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                body_bytes += data.len() as u64;
            }
        }
    }

    let echoed = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "bodyBytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(echoed.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
