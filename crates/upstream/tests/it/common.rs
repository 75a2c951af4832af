//! Test servers whose behaviour can be switched at run time, and helpers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use courier_upstream::{Instance, Service, ServiceConfig, Upstreams};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How a test server answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// 200 with the server's name as body.
    Ok,
    /// This status.
    Status(u16),
    /// Never answers.
    Hang,
    /// 200 after this long.
    Delay(Duration),
    /// Closes the connection without answering.
    Close,
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    health: Mutex<Mode>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    versions: Mutex<Vec<Version>>,
}

/// An HTTP/1.1 and h2c server on 127.0.0.1 that counts connections and
/// requests, answers `/health` with its own mode, and can be stopped and
/// restarted on the same port.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl TestServer {
    pub async fn start(name: &str) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: Mutex::new(Mode::Ok),
            health: Mutex::new(Mode::Ok),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            versions: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        TestServer {
            shared,
            addr,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn url(&self) -> Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// An instance whose id is the server's name.
    pub fn instance(&self) -> Instance {
        Instance::new(self.shared.name.clone(), self.url())
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn set_health(&self, mode: Mode) {
        *self.shared.health.lock().unwrap() = mode;
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn versions(&self) -> Vec<Version> {
        self.shared.versions.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop();
        let listener = eventually_some(Duration::from_secs(5), || {
            let std = std::net::TcpListener::bind(self.addr).ok()?;
            std.set_nonblocking(true).unwrap();
            TcpListener::from_std(std).ok()
        })
        .await;
        let task = tokio::spawn(serve(listener, self.shared.clone()));
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task, the set aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| handle(shared.clone(), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.versions.lock().unwrap().push(request.version());
    let mode = if request.uri().path() == "/health" {
        *shared.health.lock().unwrap()
    } else {
        *shared.mode.lock().unwrap()
    };
    let status = match mode {
        Mode::Ok => 200,
        Mode::Status(status) => status,
        Mode::Hang => std::future::pending().await,
        Mode::Delay(delay) => {
            tokio::time::sleep(delay).await;
            200
        }
        Mode::Close => return Err(std::io::Error::other("closing the connection")),
    };
    let mut response = Response::new(Full::new(Bytes::from(shared.name.clone())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}

/// Polls `condition` every few milliseconds until it holds; panics after
/// `deadline`.
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) {
    eventually_some(deadline, || condition().then_some(())).await
}

/// Polls `f` every few milliseconds until it gives a value; panics after
/// `deadline`.
pub async fn eventually_some<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            std::time::Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A GET of `path`.
pub fn get(path: &str) -> Request<Bytes> {
    Request::get(path).body(Bytes::new()).unwrap()
}

/// A service named `name` with these settings and these static instances.
pub fn service(config: ServiceConfig, servers: &[&TestServer]) -> Arc<Service> {
    let upstreams = Upstreams::new();
    let service = upstreams.define("svc", config);
    for server in servers {
        service.add_static(server.instance());
    }
    service
}

/// Makes `n` sequential calls and counts the replies per instance, in the
/// order of `ids`.
pub async fn tally(service: &Service, ids: &[&str], n: usize) -> Vec<usize> {
    let mut counts = vec![0; ids.len()];
    for _ in 0..n {
        let reply = service
            .call(get("/"), None, Duration::from_secs(5))
            .await
            .unwrap();
        let i = ids.iter().position(|id| *id == reply.instance).unwrap();
        counts[i] += 1;
    }
    counts
}

/// The stats of instance `id`.
pub fn stats_of(service: &Service, id: &str) -> courier_upstream::InstanceStats {
    service
        .stats()
        .instances
        .into_iter()
        .find(|i| i.id == id)
        .unwrap()
}

/// A future wrapper that counts how often it is polled.
pub struct CountPolls<F> {
    pub inner: std::pin::Pin<Box<F>>,
    pub polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.as_mut().poll(cx)
    }
}
