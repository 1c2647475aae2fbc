//! What happens on a proxy connection before HTTP: the PROXY protocol header a network load
//! balancer sends (when `--proxy-protocol` is on), then the TLS handshake (with `--tls-cert`).
//! [`Edge::accept`] is the one place a connection's [`Connection`] info is built: the TCP peer,
//! the address the balancer reported, and whether it is TLS.

pub mod proxy_protocol;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::h1::Duplex;
use crate::pipeline::client::Connection;

/// How the proxy listener takes connections.
#[derive(Clone)]
pub struct Edge {
    /// Serve TLS with this acceptor (ALPN `h2` and `http/1.1`); cleartext when `None`.
    pub tls: Option<TlsAcceptor>,
    /// Require a PROXY protocol v1 or v2 header before anything else.
    pub proxy_protocol: bool,
    /// How long the PROXY header and the TLS handshake may each take.
    pub handshake_timeout: Duration,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            tls: None,
            proxy_protocol: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection ready for HTTP.
pub enum Accepted {
    /// Cleartext.
    Plain(Prefixed<TcpStream>),
    /// After a TLS handshake.
    Tls(Box<TlsStream<Prefixed<TcpStream>>>),
}

impl Edge {
    /// Reads the PROXY header and does the TLS handshake, as configured. `None` when the
    /// connection is to be closed: no valid header, a failed handshake, or too slow for either.
    pub async fn accept(&self, mut stream: TcpStream, peer: SocketAddr) -> Option<(Accepted, Connection)> {
        let mut conn = Connection {
            peer,
            proxied: None,
            tls: self.tls.is_some(),
        };
        let mut prefix = Bytes::new();
        if self.proxy_protocol {
            let header = Box::pin(tokio::time::timeout(
                self.handshake_timeout,
                read_proxy_header(&mut stream),
            ))
            .await;
            match header {
                Ok(Ok((source, rest))) => (conn.proxied, prefix) = (source, rest),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "closing connection: no valid PROXY protocol header");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%peer, "closing connection: no PROXY protocol header in time");
                    return None;
                }
            }
        }
        let io = Prefixed { prefix, inner: stream };
        let Some(acceptor) = &self.tls else {
            return Some((Accepted::Plain(io), conn));
        };
        // Boxed: the handshake's state is large, and only TLS connections should carry it.
        match Box::pin(tokio::time::timeout(self.handshake_timeout, acceptor.accept(io))).await {
            Ok(Ok(tls)) => Some((Accepted::Tls(Box::new(tls)), conn)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Reads until a whole PROXY header is in; returns its source and the client bytes read past it.
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<(Option<SocketAddr>, Bytes)> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Some(header)) => return Ok((header.source, buf.split_off(header.len).freeze())),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A stream that first yields bytes already read from it (what followed the PROXY header, or
/// what Keygate's HTTP/1.1 side read before handing a connection to hyper).
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, whose reads start with `prefix`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

/// Owned halves: reading and writing a TCP stream need no lock between them.
impl Duplex for Prefixed<TcpStream> {
    type Read = Prefixed<OwnedReadHalf>;
    type Write = OwnedWriteHalf;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        let (read, write) = self.inner.into_split();
        (Prefixed::new(self.prefix, read), write)
    }

    fn from_halves(read: Self::Read, write: Self::Write) -> Self {
        let stream = read.inner.reunite(write).expect("the halves of one stream");
        Prefixed::new(read.prefix, stream)
    }
}

/// A TLS session's reads may write (and its writes read), so its halves share it under a lock.
impl Duplex for Box<TlsStream<Prefixed<TcpStream>>> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn from_halves(read: Self::Read, write: Self::Write) -> Self {
        read.unsplit(write)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
