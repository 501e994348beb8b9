//! A TCP load balancer in front of the members' APIs: one local address
//! that forwards each connection to a member that answers, so clients keep
//! working while any one member is down. `keelson up`'s profile endpoint
//! is one (for kubectl and the local agents); every node agent that joined
//! with `--server` runs one on loopback, fed with the `kubernetes`
//! Service's endpoints, as k3s's agents do.
//!
//! ```text
//!  kubectl, agents ──TCP──► LISTEN ──► first healthy member's API :6443
//!                             ▲
//!          every 500 ms: GET http://MEMBER:2381/health  (the store's health)
//!                     or GET https://MEMBER:6443/readyz (the API's)
//! ```
//!
//! TLS passes through untouched: clients verify the member's serving
//! certificate, which names the balancer's address too (`--tls-san`, or
//! 127.0.0.1 for an agent's). A connection sticks to the member it was
//! given; when that member dies the client reconnects (kubectl retries,
//! watches are re-established) and lands on another. A member that is
//! stopped (SIGSTOP) still accepts TCP in its kernel but no longer answers
//! its health check, so it is skipped; one that is cut off from the
//! majority answers it with 503 (no leader, or no read confirmed by one).
//! A member is unhealthy after two failed checks in a row; while it is and
//! another member is healthy, the connections it holds are closed, as a
//! load balancer's `shutdown-sessions` does, so long-lived clients (agents,
//! watches) move too — also those made to it while no member was healthy,
//! once one is again. A member taken out of the set has its connections
//! closed the same way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Client, Https};

const CHECK_PERIOD: Duration = Duration::from_millis(500);
/// Above the member's own one-second wait for a confirmed read.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed checks in a row that make a member unhealthy.
const UNHEALTHY_AFTER: usize = 2;

/// How a member's health is checked.
#[derive(Clone, Debug)]
pub enum Health {
    /// The store's plain-HTTP `/health` at this address (etcd's).
    Store(SocketAddr),
    /// The API's `/readyz`, over TLS at the member's API address: ready
    /// while the API server's store answers a linearizable read.
    Readyz,
}

/// One member behind the balancer.
#[derive(Debug)]
pub struct Backend {
    /// Where its Kubernetes API listens.
    pub api: SocketAddr,
    health: Health,
    /// The connection `/readyz` is asked on.
    readyz: Option<Client>,
    healthy: AtomicBool,
    /// Failed checks in a row.
    failures: AtomicUsize,
    /// Bumped when the member's connections are to close (unhealthy while
    /// another is healthy, or taken out of the set).
    falls: tokio::sync::watch::Sender<u64>,
}

impl Backend {
    pub fn new(api: SocketAddr, health: Health) -> Self {
        let readyz = match health {
            Health::Readyz => Https::unverified(&format!("https://{api}"))
                .ok()
                .map(Client::https),
            Health::Store(_) => None,
        };
        Self {
            api,
            health,
            readyz,
            // Until the first check says otherwise.
            healthy: AtomicBool::new(true),
            failures: AtomicUsize::new(0),
            falls: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Records a check; a second failure in a row makes the member unhealthy.
    fn checked(&self, answered: bool) {
        let failures = if answered {
            self.failures.store(0, Ordering::Relaxed);
            0
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        self.set_healthy(failures < UNHEALTHY_AFTER);
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            tracing::info!(member = %self.api, healthy, "member health changed");
        }
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn close_connections(&self) {
        self.falls.send_modify(|n| *n += 1);
    }

    /// Whether the member passes its health check within the timeout.
    async fn check(&self) -> bool {
        let check = async {
            match (&self.health, &self.readyz) {
                (Health::Store(address), _) => answers(*address).await,
                (Health::Readyz, Some(client)) => client
                    .request(hyper::Method::GET, "/readyz", "", Vec::new())
                    .await
                    .is_ok(),
                (Health::Readyz, None) => false,
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, check)
            .await
            .unwrap_or(false)
    }
}

/// The members a balancer forwards to; the set can change while it serves.
#[derive(Debug, Default)]
pub struct Balancer {
    backends: RwLock<Vec<Arc<Backend>>>,
    /// The member new connections go to first, while it stays healthy.
    preferred: AtomicUsize,
}

impl Balancer {
    pub fn new(backends: Vec<Backend>) -> Arc<Self> {
        Arc::new(Self {
            backends: RwLock::new(backends.into_iter().map(Arc::new).collect()),
            preferred: AtomicUsize::new(0),
        })
    }

    fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The members' API addresses.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.backends().iter().map(|b| b.api).collect()
    }

    /// Makes the set `wanted`: members already in it keep their health and
    /// connections; members left out have their connections closed.
    pub fn set(&self, wanted: &[SocketAddr], health: &Health) {
        let mut backends = self.backends.write().unwrap_or_else(|p| p.into_inner());
        let (kept, gone): (Vec<_>, Vec<_>) =
            backends.drain(..).partition(|b| wanted.contains(&b.api));
        for backend in gone {
            tracing::info!(member = %backend.api, "member left the balancer");
            backend.close_connections();
        }
        *backends = kept;
        for api in wanted {
            if !backends.iter().any(|b| b.api == *api) {
                tracing::info!(member = %api, "member joined the balancer");
                backends.push(Arc::new(Backend::new(*api, health.clone())));
            }
        }
    }

    /// Closes the connections of every unhealthy member, if some member is
    /// healthy (with none, there is nowhere better for them to go).
    fn move_off_unhealthy(backends: &[Arc<Backend>]) {
        if !backends.iter().any(|b| b.is_healthy()) {
            return;
        }
        for backend in backends.iter().filter(|b| !b.is_healthy()) {
            backend.close_connections();
        }
    }

    /// Serves `listener` until `shutdown`, forwarding to the members.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let checker = {
            let balancer = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(CHECK_PERIOD);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = interval.tick() => {}
                    }
                    let backends = balancer.backends();
                    let checks = backends.iter().map(|b| b.check());
                    let results = futures::future::join_all(checks).await;
                    for (backend, answered) in backends.iter().zip(results) {
                        backend.checked(answered);
                    }
                    Self::move_off_unhealthy(&backends);
                }
            })
        };
        loop {
            let (client, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
            };
            let balancer = self.clone();
            tokio::spawn(async move {
                let Some((backend, mut upstream)) = balancer.connect().await else {
                    tracing::warn!(%peer, "no member accepted the connection");
                    return;
                };
                let mut falls = backend.falls.subscribe();
                let mut client = client;
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = falls.changed() => {}
                }
            });
        }
        checker.abort();
    }

    /// A connection to the preferred member if it is healthy, else to the
    /// next healthy one, else to any that accepts.
    async fn connect(&self) -> Option<(Arc<Backend>, TcpStream)> {
        let backends = self.backends();
        let n = backends.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let healthy_first = order
            .iter()
            .filter(|i| backends[**i].is_healthy())
            .chain(order.iter().filter(|i| !backends[**i].is_healthy()));
        for &i in healthy_first {
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backends[i].api));
            if let Ok(Ok(stream)) = attempt.await {
                let _ = stream.set_nodelay(true);
                if self.preferred.swap(i, Ordering::Relaxed) != i {
                    tracing::info!(member = %backends[i].api, "forwarding to another member");
                }
                return Some((backends[i].clone(), stream));
            }
            backends[i].set_healthy(false);
        }
        None
    }
}

/// Whether `health` answers `GET /health` with 200.
async fn answers(health: SocketAddr) -> bool {
    let check = async {
        let mut stream = TcpStream::connect(health).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: member\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let status = answer.split(|b| *b == b'\n').next()?;
        Some(String::from_utf8_lossy(status).contains(" 200 "))
    };
    matches!(check.await, Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, task)
    }

    async fn round_trip(endpoint: SocketAddr) -> Vec<u8> {
        let mut stream = TcpStream::connect(endpoint).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.unwrap();
        answer.to_vec()
    }

    #[tokio::test]
    async fn connections_move_to_a_member_that_is_up() {
        // The first "member" is a closed port; the second echoes.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_address = closed.local_addr().unwrap();
        drop(closed);
        let (live, _task) = echo_server().await;
        // Health on closed ports: neither answers, so both are tried by
        // connecting (the order the endpoint falls back to).
        let backends = vec![
            Backend::new(closed_address, Health::Store(closed_address)),
            Backend::new(live, Health::Store(closed_address)),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(Balancer::new(backends).serve(listener, shutdown.clone()));
        for _ in 0..3 {
            assert_eq!(round_trip(endpoint).await, b"ping");
        }
        shutdown.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn health_needs_a_200() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                &b"HTTP/1.0 200 OK\r\n\r\nok"[..],
                b"HTTP/1.0 503 No\r\n\r\n",
            ] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 256];
                let _ = stream.read(&mut request).await;
                stream.write_all(answer).await.unwrap();
            }
        });
        assert!(answers(address).await);
        assert!(!answers(address).await);
    }

    /// Answers every request with 200.
    async fn healthy_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 256];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            }
        });
        address
    }

    #[tokio::test]
    async fn a_member_taken_out_of_the_set_loses_its_connections() {
        let (echo, _task) = echo_server().await;
        let balancer = Balancer::new(vec![Backend::new(echo, Health::Store(echo))]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(balancer.clone().serve(listener, shutdown.clone()));
        let mut stream = TcpStream::connect(endpoint).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.unwrap();
        balancer.set(&[], &Health::Readyz);
        assert!(balancer.addresses().is_empty());
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the balancer closes the connection");
        assert!(closed.is_ok());
        shutdown.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn connections_to_a_member_that_turns_unhealthy_move_to_a_healthy_one() {
        let (echo, _task) = echo_server().await;
        let healthy = healthy_server().await;
        // The first member echoes but never answers `/health` with a 200;
        // the second is healthy. The first connection goes to the first
        // (healthy until checked), and is closed once two checks failed.
        let backends = vec![
            Backend::new(echo, Health::Store(echo)),
            Backend::new(echo, Health::Store(healthy)),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut stream = TcpStream::connect(endpoint).await.unwrap();
        let served = tokio::spawn(Balancer::new(backends).serve(listener, shutdown.clone()));
        stream.write_all(b"ping").await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the endpoint closes the connection");
        assert!(closed.is_ok());
        shutdown.cancel();
        served.await.unwrap();
    }
}
