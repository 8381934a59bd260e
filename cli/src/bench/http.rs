//! HTTP writes: concurrent clients posting JSON patches (a field of their own each time)
//! to one `gundb node` process, each waiting for its `201` (the write is durable) before
//! the next, against the same patches emitted in this process through `Site` handles by as
//! many writers: what the HTTP layer costs.

use super::tcp::NodeProcess;
use super::Progress;
use anyhow::{ensure, Context as _, Result};
use gundb::doc::{Document, Patch};
use gundb::{Emit, Site, StreamId};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Documents the writes go to.
const STREAMS: u64 = 16;

/// The patch writer `writer` sends as its `n`th write: a field of its own.
fn patch(writer: u64, n: u64) -> String {
    format!(r#"{{"w{writer}-{n}": {n}}}"#)
}

fn stream_name(writer: u64) -> String {
    format!("bench-http-{}", writer % STREAMS)
}

/// Durable writes per second over HTTP by `writers` connections, and in this process by
/// `writers` writers, each for `duration`.
pub fn rates(writers: u64, duration: Duration, progress: &Progress) -> Result<(f64, f64)> {
    progress.say(format!("in-process emit, {writers} writers"));
    let in_process = in_process(writers, duration)?;
    progress.say(format!("HTTP, {writers} connections"));
    let root = tempfile::tempdir()?;
    let secret = root.path().join("secret");
    std::fs::write(&secret, "bench")?;
    let node = NodeProcess::start(&root.path().join("node"), &secret, None)?;
    let started = Instant::now();
    let done = load(node.http, writers, duration)?;
    Ok((done as f64 / started.elapsed().as_secs_f64(), in_process))
}

/// Drives `connections` keep-alive connections to `http` for `duration`, each posting a
/// patch and reading its response before the next, and returns how many were answered
/// `201`. Like `wrk`, it is one thread multiplexing plain sockets writing requests by
/// hand, so that the load generator takes as little as it can of the cores the node runs
/// on: a blocking client's thread per connection took a third of them.
fn load(http: SocketAddr, connections: u64, duration: Duration) -> Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..connections {
            tasks.spawn(async move {
                let mut socket = TcpStream::connect(http).await.context("connecting to the node")?;
                socket.set_nodelay(true)?;
                let path = format!("/streams/{}/events", stream_name(writer));
                let (mut request, mut response) = (Vec::new(), Vec::new());
                let mut done = 0;
                while tokio::time::Instant::now() < deadline {
                    let body = patch(writer, done);
                    request.clear();
                    write!(
                        request,
                        "POST {path} HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )?;
                    socket.write_all(&request).await?;
                    let status = read_response(&mut socket, &mut response).await?;
                    ensure!(status == 201, "an HTTP write was answered {status}");
                    done += 1;
                }
                Ok::<u64, anyhow::Error>(done)
            });
        }
        let mut done = 0;
        while let Some(writer) = tasks.join_next().await {
            done += writer.context("HTTP writer task")??;
        }
        Ok(done)
    })
}

/// The largest response the load generator reads: a write's answer is a few hundred bytes.
const RESPONSE_BYTES_MAX: usize = 64 << 10;

/// Reads one HTTP/1.1 response with a `Content-Length` body from `socket`, using `buffer`,
/// and returns its status code.
async fn read_response(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<u16> {
    buffer.clear();
    loop {
        ensure!(buffer.len() < RESPONSE_BYTES_MAX, "a response past {RESPONSE_BYTES_MAX} bytes");
        let mut chunk = [0u8; 4096];
        let read = socket.read(&mut chunk).await?;
        ensure!(read > 0, "the node closed an HTTP connection");
        buffer.extend_from_slice(&chunk[..read]);
        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buffer[..head_end])?;
        let status = head.split_whitespace().nth(1).context("a status line")?.parse()?;
        let length: usize = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse()))
            .context("a Content-Length header")??;
        if buffer.len() >= head_end + 4 + length {
            return Ok(status);
        }
    }
}

/// The same patches emitted through `Site` handles by `writers` writers in this process.
fn in_process(writers: u64, duration: Duration) -> Result<f64> {
    actix::System::new().block_on(async move {
        let site = Site::temporary()?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let stream = site.stream::<Document>(StreamId::named(&stream_name(writer))).await?;
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            tasks.push(actix::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    stream.send(Emit::new(Patch::from_json(&patch(writer, n))?)).await??;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.context("writer task")??;
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        site.close().await;
        Ok(rate)
    })
}
