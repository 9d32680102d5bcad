//! Where a VMI's virt-launcher command socket is, as virt-handler finds it.
//!
//! The launcher listens in an `emptyDir` volume named `sockets`; from the node (and from
//! virt-handler, which mounts the kubelet's pods directory at `/pods`) that is
//! `<pods_dir>/<podUID>/volumes/kubernetes.io~empty-dir/sockets/launcher-sock`. A VMI lists
//! its pods in `status.activePods` (pod UID → node); only pods on this node can have a
//! socket here. During a same-node migration two may exist for a moment: like virt-handler,
//! we refuse to guess and wait until only one is left.

use std::io;
use std::path::{Path, PathBuf};

/// The launcher's command socket file name (`StandardLauncherSocketFileName`).
pub const SOCKET_FILE: &str = "launcher-sock";
/// Written next to the socket by virt-handler once it has given up on a launcher
/// (`StandardLauncherUnresponsiveFileName`).
pub const UNRESPONSIVE_MARKER: &str = "launcher-unresponsive";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("no active pod of the VMI is on node {node:?}")]
    NoPodOnNode { node: String },
    #[error("no launcher socket found (looked at {})", display_paths(.tried))]
    NotFound { tried: Vec<PathBuf> },
    #[error("{} launcher sockets found ({}); waiting for only one to exist", .found.len(), display_paths(.found))]
    Multiple { found: Vec<PathBuf> },
    #[error("launcher at {} is marked unresponsive", .socket.display())]
    Unresponsive { socket: PathBuf },
}

impl SocketError {
    /// The bounded problem kind for self-metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoPodOnNode { .. } | Self::NotFound { .. } | Self::Multiple { .. } => "socket",
            Self::Unresponsive { .. } => "unresponsive",
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// The launcher's command socket of a pod, built in one allocation (this runs for every VMI
/// on every pass).
pub fn socket_path(pods_dir: &Path, pod_uid: &str) -> PathBuf {
    const BELOW_POD: [&str; 4] = ["volumes", "kubernetes.io~empty-dir", "sockets", SOCKET_FILE];
    let len = pods_dir.as_os_str().len()
        + 1
        + pod_uid.len()
        + BELOW_POD.iter().map(|part| part.len() + 1).sum::<usize>();
    let mut path = PathBuf::with_capacity(len);
    path.push(pods_dir);
    path.push(pod_uid);
    for part in BELOW_POD {
        path.push(part);
    }
    path
}

/// Finds the one launcher socket of a VMI on `node` (an empty node matches every pod, as
/// in virt-handler) among `active_pods` (pod UID, node name), unless virt-handler marked
/// it unresponsive. The marker is looked at only when `connected(socket)` is false: it says
/// that virt-handler could not reach the launcher, and a kept connection says otherwise.
pub fn find_socket<'a>(
    pods_dir: &Path,
    node: &str,
    active_pods: impl IntoIterator<Item = (&'a str, &'a str)>,
    connected: impl FnOnce(&Path) -> bool,
) -> Result<PathBuf, SocketError> {
    let socket = locate_socket(pods_dir, node, active_pods)?;
    if connected(&socket) || !is_marked_unresponsive(&socket) {
        Ok(socket)
    } else {
        Err(SocketError::Unresponsive { socket })
    }
}

/// [`find_socket`] without the unresponsive marker: where the one socket is.
fn locate_socket<'a>(
    pods_dir: &Path,
    node: &str,
    active_pods: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<PathBuf, SocketError> {
    let mut tried = Vec::new();
    let mut found = Vec::new();
    for (pod_uid, pod_node) in active_pods {
        if !node.is_empty() && node != pod_node {
            continue;
        }
        // A UID from the API becomes a path component: never let it climb out.
        if !is_plain_uid(pod_uid) {
            tracing::debug!(pod_uid, "ignoring an active pod with an unusual UID");
            continue;
        }
        let socket = socket_path(pods_dir, pod_uid);
        if exists_no_follow(&socket) {
            found.push(socket);
        } else {
            tried.push(socket);
        }
    }
    match found.len() {
        0 if tried.is_empty() => Err(SocketError::NoPodOnNode {
            node: node.to_owned(),
        }),
        0 => Err(SocketError::NotFound { tried }),
        1 => Ok(found.remove(0)),
        _ => {
            found.sort();
            Err(SocketError::Multiple { found })
        }
    }
}

/// Whether virt-handler left the unresponsive marker next to `socket`.
fn is_marked_unresponsive(socket: &Path) -> bool {
    socket
        .parent()
        .is_some_and(|dir| exists_no_follow(&dir.join(UNRESPONSIVE_MARKER)))
}

/// `lstat` rather than `stat`: the kubelet's directories are not ours, and a symlink
/// planted there must not send us elsewhere (virt-handler uses no-follow lookups too).
fn exists_no_follow(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => !meta.file_type().is_symlink(),
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), %err, "cannot stat");
            }
            false
        }
    }
}

fn is_plain_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn make_socket(pods: &Path, uid: &str) -> PathBuf {
        let socket = socket_path(pods, uid);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        std::fs::write(&socket, b"").unwrap();
        socket
    }

    fn not_connected(_: &Path) -> bool {
        false
    }

    #[test]
    fn path_is_the_kubelet_layout() {
        assert_eq!(
            socket_path(Path::new("/pods"), "1234-ab"),
            PathBuf::from("/pods/1234-ab/volumes/kubernetes.io~empty-dir/sockets/launcher-sock")
        );
    }

    #[test]
    fn finds_the_socket_of_the_pod_on_this_node_only() {
        let pods = tempfile::tempdir().unwrap();
        let here = make_socket(pods.path(), "aaaa");
        make_socket(pods.path(), "bbbb");
        let found = find_socket(
            pods.path(),
            "node-a",
            [("aaaa", "node-a"), ("bbbb", "node-b")],
            not_connected,
        )
        .unwrap();
        assert_eq!(found, here);
    }

    #[test]
    fn no_pod_on_node_missing_socket_and_two_sockets_are_errors() {
        let pods = tempfile::tempdir().unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-b")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NoPodOnNode { .. }), "{err}");
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-a")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NotFound { .. }), "{err}");
        make_socket(pods.path(), "aaaa");
        make_socket(pods.path(), "bbbb");
        let err = find_socket(
            pods.path(),
            "node-a",
            [("aaaa", "node-a"), ("bbbb", "node-a")],
            not_connected,
        )
        .unwrap_err();
        assert!(
            matches!(err, SocketError::Multiple { ref found } if found.len() == 2),
            "{err}"
        );
        assert_eq!(err.kind(), "socket");
    }

    #[test]
    fn unresponsive_marker_wins() {
        let pods = tempfile::tempdir().unwrap();
        let socket = make_socket(pods.path(), "aaaa");
        std::fs::write(socket.parent().unwrap().join(UNRESPONSIVE_MARKER), b"").unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-a")], not_connected).unwrap_err();
        assert_eq!(err.kind(), "unresponsive");
        // A kept connection to the launcher says more than the marker.
        let connected = |found: &Path| found == socket;
        let found = find_socket(pods.path(), "node-a", [("aaaa", "node-a")], connected).unwrap();
        assert_eq!(found, socket);
    }

    #[test]
    fn uids_cannot_escape_the_pods_dir() {
        let pods = tempfile::tempdir().unwrap();
        let err = find_socket(
            pods.path(),
            "node-a",
            [("../../etc", "node-a")],
            not_connected,
        )
        .unwrap_err();
        assert!(matches!(err, SocketError::NoPodOnNode { .. }), "{err}");
    }

    #[test]
    fn symlinked_sockets_are_not_followed() {
        let pods = tempfile::tempdir().unwrap();
        let real = make_socket(pods.path(), "real");
        let link = socket_path(pods.path(), "link");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("link", "node-a")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NotFound { .. }), "{err}");
    }
}
