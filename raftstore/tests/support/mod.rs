//! An in-process member for the store's integration tests: port 0, a temp
//! dir, and a shutdown that waits for the member to stop.
//!
//! Test scaffolding: failures panic (the test fails with the message), and
//! each test binary uses only part of it.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use keelson_raftstore::node::MemberConfig;
use keelson_raftstore::server::{Listeners, ServeError, run};
use metrics_exporter_prometheus::PrometheusHandle;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub(crate) struct Member {
    pub(crate) client: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) channel: Channel,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    _dir: TempDir,
}

impl Member {
    /// Starts a member whose config is `adjust`ed from the defaults.
    pub(crate) async fn start(
        adjust: impl FnOnce(&mut MemberConfig),
        metrics: Option<PrometheusHandle>,
    ) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client_address, metrics_address) = (
            client.local_addr().unwrap(),
            metrics_listener.local_addr().unwrap(),
        );
        let mut config = MemberConfig {
            data_dir: dir.path().to_path_buf(),
            ..MemberConfig::default()
        };
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let listeners = Listeners {
            client,
            peer: None,
            metrics: Some(metrics_listener),
        };
        let task = tokio::spawn(run(config, listeners, metrics, shutdown.clone()));
        // The listener is bound already: connecting succeeds as soon as the
        // member accepts, and the first RPC waits for it to serve.
        let channel = Endpoint::from_shared(format!("http://{client_address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        Member {
            client: client_address,
            metrics: metrics_address,
            channel,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// Stops the member and waits until it has.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A plain HTTP/1.1 GET on the metrics port; returns (status line, body).
pub(crate) async fn http_get(address: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}
