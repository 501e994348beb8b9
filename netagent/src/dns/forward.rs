//! Forwarding to upstream resolvers, for names outside the cluster's zones
//! — only when upstreams are configured (none by default: nothing leaves
//! the machine unless an operator names a resolver).
//!
//! ```text
//!  question ─► upstream 1 ─(timeout/error)─► upstream 2 ─► … ─► first answer
//!              UDP, fresh id and port; TCP when the question came over TCP
//!              or the UDP answer was truncated
//! ```

use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_server::proto::serialize::binary::DecodeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The UDP payload asked of upstreams (DNS flag day 2020).
const UDP_PAYLOAD: u16 = 1232;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("cannot encode the question for upstream {upstream}")]
    Encode {
        upstream: SocketAddr,
        #[source]
        source: ProtoError,
    },
    #[error("upstream {upstream} over {proto}")]
    Io {
        upstream: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream} sent a message that does not parse")]
    Decode {
        upstream: SocketAddr,
        #[source]
        source: DecodeError,
    },
}

/// Asks upstream resolvers, in order, until one answers.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstreams`, waiting `timeout` for each.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    /// The answer of the first upstream that gives one to `query`
    /// (recursion desired), over TCP if `tcp`, else over UDP falling back
    /// to TCP on truncation. Its id is the one the upstream was asked with.
    ///
    /// # Errors
    ///
    /// The last upstream's [`ForwardError`] when none answered, or
    /// [`ForwardError::NoUpstream`].
    pub async fn ask(&self, query: &Query, tcp: bool) -> Result<Message, ForwardError> {
        let mut last = ForwardError::NoUpstream;
        for &upstream in &self.upstreams {
            let mut message = Message::new(query_id(), MessageType::Query, OpCode::Query);
            message.metadata.recursion_desired = true;
            message.add_query(query.clone());
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD);
            message.set_edns(edns);
            let bytes = message
                .to_vec()
                .map_err(|source| ForwardError::Encode { upstream, source })?;
            let id = message.metadata.id;
            let attempt = async {
                if !tcp {
                    let answer = self.udp(upstream, &bytes, id).await?;
                    if !answer.metadata.truncation {
                        return Ok(answer);
                    }
                }
                self.tcp(upstream, &bytes).await
            };
            let result = tokio::time::timeout(self.timeout, attempt)
                .await
                .unwrap_or(Err(ForwardError::Timeout {
                    upstream,
                    timeout: self.timeout,
                }));
            match result {
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    tracing::debug!(%upstream, error = %keelson_control::runtime::chain(&error), "upstream failed");
                    last = error;
                }
            }
        }
        Err(last)
    }

    async fn udp(
        &self,
        upstream: SocketAddr,
        bytes: &[u8],
        id: u16,
    ) -> Result<Message, ForwardError> {
        let io = |source| ForwardError::Io {
            upstream,
            proto: "udp",
            source,
        };
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        // Connected: datagrams from anyone else are dropped by the kernel.
        socket.connect(upstream).await.map_err(io)?;
        socket.send(bytes).await.map_err(io)?;
        let mut buffer = vec![0; usize::from(UDP_PAYLOAD).max(4096)];
        loop {
            let n = socket.recv(&mut buffer).await.map_err(io)?;
            let Some(answer) = buffer.get(..n) else {
                continue;
            };
            match Message::from_vec(answer) {
                Ok(message) if message.metadata.id == id => return Ok(message),
                // A late answer to an earlier question, or noise.
                Ok(_) => continue,
                Err(source) => return Err(ForwardError::Decode { upstream, source }),
            }
        }
    }

    async fn tcp(&self, upstream: SocketAddr, bytes: &[u8]) -> Result<Message, ForwardError> {
        let io = |source| ForwardError::Io {
            upstream,
            proto: "tcp",
            source,
        };
        let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
        let length = u16::try_from(bytes.len()).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "question longer than 65535 bytes",
            ))
        })?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(io)?;
        let length = stream.read_u16().await.map_err(io)?;
        let mut answer = vec![0; usize::from(length)];
        stream.read_exact(&mut answer).await.map_err(io)?;
        Message::from_vec(&answer).map_err(|source| ForwardError::Decode { upstream, source })
    }
}

/// A message id nobody off the box can guess: std's randomly keyed hasher
/// over a counter.
fn query_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (std::hash::RandomState::new().hash_one(n) & 0xffff) as u16
}
