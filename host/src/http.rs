//! A small HTTP server on a thread and a current-thread tokio runtime of
//! its own, apart from the dataflow: what `/metrics` and the admin API run
//! on. A slow client never holds a worker back, and the dataflow never
//! depends on tokio.

use std::net::SocketAddr;

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The address could not be bound (taken, or not this host's).
    Bind(std::io::Error),
    /// The runtime or the thread could not be made.
    Start(std::io::Error),
}

/// A running server; stopped by [`Server::stop`] or when dropped.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` here (so a bad address is an error before anything
    /// runs) and serves `app` from a thread called `name`.
    pub fn start(listen: SocketAddr, name: &str, app: axum::Router) -> Result<Server, StartError> {
        let listener = std::net::TcpListener::bind(listen).map_err(StartError::Bind)?;
        listener.set_nonblocking(true).map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(StartError::Start)?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let label = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!("{label} on {addr}: {e}"),
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!("{label} on {addr} stopped: {e}");
                    }
                });
            })
            .map_err(StartError::Start)?;
        Ok(Server { addr, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address it listens on (the bound port when `listen` said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread (which lets go of whatever
    /// the handlers hold).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}
