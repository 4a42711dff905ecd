//! gRPC over Unix sockets: serving the CSI services and connecting to them (tests, the demo).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?} is not a unix socket address (unix:///path/to/csi.sock)")]
    BadEndpoint(String),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Turns `unix:///path`, `unix:/path` or `/path` into the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path =
        endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ServeError::BadEndpoint(endpoint.to_string()))
    }
}

/// Binds the socket (replacing a stale one left by an earlier process).
pub fn listen(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen_err(e)),
        _ => {}
    }
    UnixListener::bind(path).map_err(listen_err)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight calls.
pub async fn serve(
    router: Router,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await?;
    Ok(())
}

/// A gRPC channel to a Unix socket.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stopping only when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("/csi.sock").unwrap(), PathBuf::from("/csi.sock"));
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }
}
