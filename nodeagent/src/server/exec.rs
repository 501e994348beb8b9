//! `kubectl exec` over WebSocket: Kubernetes' channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`).
//!
//! ```text
//!  every binary message: [channel][data]
//!    0 stdin ──► the process        1 stdout, 2 stderr ◄── the process
//!    3 error: a Status when the process ends (exit code in its causes)
//!    4 resize: {"Width":W,"Height":H} ──► the terminal
//!    255 (v5 only): [255][channel] closes that channel (stdin: end of input)
//! ```
//!
//! The process is the runtime's exec helper (see `crate::shim::run_exec`),
//! with pipes for its streams, or a pty when a terminal is asked for.

use std::os::fd::OwnedFd;
use std::process::Stdio;

use axum::body::Body;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message, Role};

use super::{query_flag, query_values, status};
use crate::runtime::{ContainerState, Runtime};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The protocols spoken, preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What the exec request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The first protocol of ours the client offers.
fn negotiate(offered: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS.into_iter().find(|p| offered.contains(p))
}

/// The Status the error channel carries when the process has exited.
fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Answers an exec request: `101 Switching Protocols`, then the session on
/// the upgraded connection.
pub(super) fn exec<R: Runtime>(
    runtime: &R,
    container: &ContainerState,
    query: &[(String, String)],
    mut request: Request<Incoming>,
) -> Response<Body> {
    let command: Vec<String> = query_values(query, "command")
        .into_iter()
        .map(str::to_owned)
        .collect();
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let streams = Streams {
        stdin: query_flag(query, "stdin"),
        stdout: query_flag(query, "stdout"),
        stderr: query_flag(query, "stderr"),
        tty: query_flag(query, "tty"),
    };
    // What is wrong with the request itself comes first: a client that
    // falls back to another protocol then shows it.
    let process = match runtime.exec_command(&container.id, &command, streams.tty) {
        Ok(process) => process,
        Err(error) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("cannot exec in container {:?}: {error}", container.name),
            );
        }
    };
    let headers = request.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(negotiate);
    let (Some(key), true) = (key, upgrade) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io)",
        );
    };
    let Some(protocol) = protocol else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("no supported subprotocol offered; this node speaks {PROTOCOLS:?}"),
        );
    };
    let upgraded = hyper::upgrade::on(&mut request);
    let name = container.name.clone();
    tokio::spawn(async move {
        let upgraded = match upgraded.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "exec upgrade failed");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if let Err(error) = session(socket, process, &command, &streams, protocol).await {
            tracing::debug!(container = %name, %error, "exec session ended");
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(protocol),
    );
    response
}

/// Copies `from` into the outgoing messages on `channel` until its end.
async fn pump(mut from: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Message>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        // A pty reads EIO once the last process holding it is gone.
        let n = match from.read(&mut buffer[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buffer[0] = channel;
        if out
            .send(Message::Binary(buffer[..=n].to_vec().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A terminal for the process: its end for the process's three streams,
/// and ours (read, write, and resize).
fn terminal() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    Ok((pty.master, pty.slave))
}

async fn session<S>(
    socket: WebSocketStream<S>,
    mut process: tokio::process::Command,
    command: &[String],
    streams: &Streams,
    protocol: &str,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<Message>(64);
    let sender = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // A normal closure is how the client knows every stream ended.
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        drop(sink.send(Message::Close(Some(normal))).await);
        drop(sink.close().await);
    });
    let mut pumps = Vec::new();
    let mut stdin: Option<Box<dyn AsyncWrite + Send + Unpin>> = None;
    let mut master_for_resize: Option<OwnedFd> = None;
    let mut child = if streams.tty {
        let (master, slave) = terminal()?;
        process
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let child = process.spawn()?;
        // The process holds the only copies of its end now.
        drop(process);
        let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
        let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
        pumps.push(tokio::spawn(pump(reader, STDOUT, out.clone())));
        if streams.stdin {
            stdin = Some(Box::new(writer));
        }
        master_for_resize = Some(master);
        child
    } else {
        let piped = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        process
            .stdin(piped(streams.stdin))
            .stdout(piped(streams.stdout))
            .stderr(piped(streams.stderr));
        let mut child = process.spawn()?;
        drop(process);
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(stdout, STDOUT, out.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(stderr, STDERR, out.clone())));
        }
        if let Some(input) = child.stdin.take() {
            stdin = Some(Box::new(input));
        }
        child
    };
    let v5 = protocol.starts_with("v5");
    // What the client sends: input, resizes, closes. It ends with the client.
    let mut input = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data.to_vec(),
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(writer) = stdin.as_mut()
                        && (writer.write_all(payload).await.is_err()
                            || writer.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let (Some(master), Ok(size)) = (
                        master_for_resize.as_ref(),
                        serde_json::from_slice::<serde_json::Value>(payload),
                    ) {
                        let dimension =
                            |k: &str| size[k].as_u64().unwrap_or(0).min(u16::MAX as u64) as u16;
                        let winsize = rustix::termios::Winsize {
                            ws_row: dimension("Height"),
                            ws_col: dimension("Width"),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(master, winsize);
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    // End of input: the process reads EOF.
                    stdin = None;
                }
                _ => {}
            }
        }
    });
    let code = tokio::select! {
        exited = child.wait() => exited?.code().unwrap_or(137),
        _ = &mut input => {
            // The client went away: the process goes too.
            drop(child.start_kill());
            child.wait().await?.code().unwrap_or(137)
        }
    };
    for pump in pumps {
        drop(pump.await);
    }
    let mut status = vec![ERROR];
    status.extend_from_slice(exit_status(command, code).to_string().as_bytes());
    drop(out.send(Message::Binary(status.into())).await);
    drop(out);
    input.abort();
    drop(sender.await);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_offered_protocol_wins() {
        assert_eq!(
            negotiate("v4.channel.k8s.io, v5.channel.k8s.io, channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(negotiate("v4.channel.k8s.io"), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate("channel.k8s.io,base64.channel.k8s.io"), None);
    }

    #[test]
    fn exit_codes_travel_in_the_status() {
        assert_eq!(exit_status(&[], 0)["status"], "Success");
        let failed = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
