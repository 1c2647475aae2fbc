//! `keygate-hold-conns`: opens many HTTP/1.1 keep-alive connections, sends one request on each,
//! and then holds them idle, so that `bench/run` can read what an idle client connection costs a
//! proxy in memory (its RSS with the connections held, minus its RSS before).
//!
//! ```text
//! keygate-hold-conns --addr 127.0.0.1:18083 --path /bench/hello --connections 10000 [--hold-ms 600000]
//! ```
//!
//! Prints `held=N` once every connection has had its answer, then keeps them open for
//! `--hold-ms` (or until killed), and exits non-zero if any connection failed or was closed by
//! the server while held (an idle timeout shorter than the measurement would make the figure a
//! lie). Raw sockets rather than an HTTP client: the request and the read of its answer are all
//! this needs, and the client's own memory stays out of the way.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const USAGE: &str = "usage: keygate-hold-conns --addr HOST:PORT --path PATH --connections N [--hold-ms MS]";

struct Args {
    addr: SocketAddr,
    path: String,
    connections: usize,
    hold: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut addr, mut path, mut connections) = (None, None, 0usize);
    let mut hold = Duration::from_secs(600);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value("--addr")?.parse().context("--addr")?),
            "--path" => path = Some(value("--path")?),
            "--connections" => connections = value("--connections")?.parse().context("--connections")?,
            "--hold-ms" => hold = Duration::from_millis(value("--hold-ms")?.parse().context("--hold-ms")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    match (addr, path) {
        (Some(addr), Some(path)) if connections > 0 => Ok(Args {
            addr,
            path,
            connections,
            hold,
        }),
        _ => bail!("--addr, --path and a positive --connections are required\n{USAGE}"),
    }
}

/// One request, its whole answer read (by Content-Length or chunks), the connection left open.
async fn open(args: &Args) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(args.addr).await.context("connect")?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nCookie: session=browser-session-cookie\r\n\r\n",
        args.path, args.addr
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("answered {:?}", line.trim_end());
    }
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("closed inside the answer's head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    if !chunked {
        let mut body = vec![0; length.context("the answer has no Content-Length")?];
        reader.read_exact(&mut body).await?;
        return Ok(reader);
    }
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {:?}", line.trim_end()))?;
        // The chunk and its CRLF; the last (empty) chunk is followed by the final CRLF.
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await?;
        if size == 0 {
            return Ok(reader);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = std::sync::Arc::new(args);
    // Opened a few hundred at a time: a burst of 10,000 SYNs overflows the listen backlog.
    let mut held = Vec::with_capacity(args.connections);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        if pending.len() >= 256 {
            held.push(pending.join_next().await.expect("not empty")??);
        }
        let args = args.clone();
        pending.spawn(async move { open(&args).await });
    }
    while let Some(conn) = pending.join_next().await {
        held.push(conn??);
    }
    println!("held={}", held.len());
    // A held connection becomes readable only if the server closes it (or sends something it
    // should not): either way the measurement is void.
    let closed = async {
        let mut watch = tokio::task::JoinSet::new();
        for mut conn in held {
            watch.spawn(async move {
                let mut byte = [0u8; 1];
                let _ = conn.read(&mut byte).await;
            });
        }
        watch.join_next().await
    };
    tokio::select! {
        Some(_) = closed => bail!("the server closed a held connection"),
        () = tokio::time::sleep(args.hold) => Ok(()),
    }
}

fn main() -> ExitCode {
    keygate_tests::tool_main(
        "keygate-hold-conns",
        tokio::runtime::Builder::new_current_thread(),
        parse_args(),
        run,
    )
}
