//! The server lifecycle of every simulator: bind 127.0.0.1, serve an axum router from a
//! tokio task, stop gracefully with a bounded wait, stop on drop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`Server::shutdown`] waits for in-flight requests.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A running simulator server. Dropping it stops the server; [`Server::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Binds `127.0.0.1:port` (0 = an ephemeral port). Bind first, serve later, when the
/// simulator's state needs its own URL.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await
}

impl Server {
    /// Serves `router` on `listener` from a tokio task; `name` ("Stripe") labels its log
    /// lines.
    pub fn serve(
        listener: TcpListener,
        router: axum::Router,
        name: &'static str,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            // Small error responses must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, sandbox = name, "Sandbox server stopped with an error.");
            }
        });
        Ok(Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Binds `127.0.0.1:port` and serves `router` there.
    pub async fn start(
        port: u16,
        router: axum::Router,
        name: &'static str,
    ) -> std::io::Result<Server> {
        Server::serve(bind(port).await?, router, name)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits (up to [`SHUTDOWN_WAIT`]) for in-flight
    /// requests.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
                .await
                .is_err()
        {
            // A client holding a keep-alive connection open must not hang the caller.
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_until_shut_down() {
        let router = axum::Router::new().fallback(|| async { "hello" });
        let server = Server::start(0, router, "test").await.unwrap();
        let addr = server.addr();
        assert!(server.url().starts_with("http://127.0.0.1:"));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        server.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
